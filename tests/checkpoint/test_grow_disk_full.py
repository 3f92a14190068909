"""``flm grow`` into a full disk (ENOSPC, injected where the grown tensors are written, through O_DIRECT or
buffered I/O, or into DCP shards with ``--format sharded``): one line naming the output and "no space left on
device", exit 2, no temporary folder left."""

from __future__ import annotations

import errno
import io
import os

import pytest
import torch.distributed.checkpoint.filesystem as dcp_fs

from flm.checkpoint import latest_checkpoint
from flm.cli import main
from flm.config import config_from_dict
from flm.growth import tensorio
from flm.train.loop import train_stage
from tests.conftest import tiny_config_dict


@pytest.fixture(scope="module")
def ckpt(tiny_corpus, prepared_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("grow_src")
    train_stage(config_from_dict(tiny_config_dict(tiny_corpus, prepared_dir, steps=2, eval_every=0)), run)
    return latest_checkpoint(run)


def _enospc(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _fill_direct(monkeypatch) -> None:
    """os.write into a grown tensor file fails as on a full disk (the O_DIRECT path)."""
    real = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".safetensors"):
            del data  # as the real os.write, keep no reference to the buffer in the traceback
            raise _enospc(fd)
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def _fill_buffered(monkeypatch) -> None:
    """A file system without O_DIRECT: the buffered file's write fails as on a full disk."""

    class Full(io.FileIO):
        def write(self, data):
            raise _enospc(self.name)

    monkeypatch.setattr(tensorio, "_open_direct", lambda path, flags: None)
    monkeypatch.setattr(tensorio, "open", lambda path, mode: Full(path, "w") if "w" in mode else open(path, mode),
                        raising=False)


def _fill_dcp(monkeypatch) -> None:
    """DCP's shard writer fails as on a full disk (``--format sharded``)."""
    def write_item(*args, **kwargs):
        raise _enospc("__0_0.distcp")

    monkeypatch.setattr(dcp_fs, "_write_item", write_item)


@pytest.mark.parametrize("fill,fmt", [(_fill_direct, "full"), (_fill_buffered, "full"), (_fill_dcp, "sharded")],
                         ids=["direct", "buffered", "sharded"])
def test_grow_into_a_full_disk_is_one_line(ckpt, tmp_path, monkeypatch, capsys, fill, fmt):
    out = tmp_path / "grown"
    fill(monkeypatch)
    code = main(["grow", str(ckpt), "--to", "d_ff=192", "--out", str(out), "--no-progress", "--format", fmt])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"flm grow: error: no space left on device writing {out}")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no temporary folder either
