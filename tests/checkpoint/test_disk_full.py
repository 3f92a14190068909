"""A checkpoint write that runs out of disk (ENOSPC, injected) stops training with one line naming the newest
complete checkpoint; that checkpoint is intact and no temporary folder is left behind. Injected as each writer
reports it: an ``OSError``, safetensors' own ``SafetensorError``, torch.distributed.checkpoint's
``CheckpointException`` (a sharded checkpoint, written at once or in the background), and a short write on a
file system left full (torch's zip writer says only "unexpected pos")."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import tomli_w
import torch.distributed.checkpoint.filesystem as dcp_fs
from safetensors import SafetensorError

from flm import io
from flm.checkpoint import latest_checkpoint, store, verify_manifest
from flm.cli import main
from flm.config import config_from_dict
from flm.errors import FlmError
from flm.train.loop import train_stage
from tests.conftest import tiny_config_dict

SECOND = "step_00000004"  # the second checkpoint (every 2 steps), the one that meets the full disk


def _enospc(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _full_os_error(monkeypatch, run: Path) -> None:
    real = store._save_tensors

    def full_disk(tensors, path):
        if SECOND in str(path):
            raise _enospc(path)
        return real(tensors, path)

    monkeypatch.setattr(store, "_save_tensors", full_disk)


def _full_safetensors(monkeypatch, run: Path) -> None:
    """safetensors' save_file as on a full disk: its own SafetensorError, not an OSError."""
    real = store.save_file

    def save_file(tensors, path, *args, **kwargs):
        if SECOND in str(path):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(store, "save_file", save_file)


def _full_dcp(monkeypatch, run: Path, short_write: bool = False) -> None:
    """DCP's shard writer fails once the first checkpoint is complete: ENOSPC, which DCP wraps in its
    CheckpointException; or (``short_write``) torch's zip writer's RuntimeError on a disk with no space left."""
    real = dcp_fs._write_item

    def write_item(*args, **kwargs):
        if (run / "checkpoints" / "step_00000002" / "manifest.json").is_file():
            if short_write:
                monkeypatch.setattr(io, "_free_bytes", lambda path: 0)
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
            raise _enospc("__0_0.distcp")
        return real(*args, **kwargs)

    monkeypatch.setattr(dcp_fs, "_write_item", write_item)


def _check_one_line_and_clean(run: Path, msg: str) -> None:
    assert "\n" not in msg and "no space left on the device writing checkpoint" in msg, msg
    assert f"the newest complete checkpoint is {run / 'checkpoints' / 'step_00000002'}" in msg
    assert msg.endswith("free space, then --resume")
    newest = latest_checkpoint(run)
    assert newest is not None and newest.name == "step_00000002"
    verify_manifest(newest)  # intact
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]  # no .tmp-* left


@pytest.mark.parametrize("fmt,fill", [
    ("full", _full_os_error),
    ("full", _full_safetensors),
    ("sharded", _full_dcp),
    ("sharded", lambda mp, run: _full_dcp(mp, run, short_write=True)),
    ("async", _full_dcp),
], ids=["full-oserror", "full-safetensors", "sharded-dcp", "sharded-short-write", "sharded-async-dcp"])
def test_disk_full_during_a_checkpoint_write(tiny_corpus, prepared_dir, tmp_path, monkeypatch, fmt, fill):
    run = tmp_path / "run"
    fill(monkeypatch, run)
    cfg = tiny_config_dict(tiny_corpus, prepared_dir, steps=4, ckpt_every=2, eval_every=0)
    cfg["train"]["checkpoint_format"] = "full" if fmt == "full" else "sharded"
    cfg["train"]["async_checkpoint"] = fmt == "async"
    with pytest.raises(FlmError) as e:
        train_stage(config_from_dict(cfg), run)
    _check_one_line_and_clean(run, str(e.value))


def test_flm_run_onto_a_full_disk_is_one_line_exit_2(tiny_corpus, prepared_dir, tmp_path, monkeypatch, capsys):
    """`flm run` (a plan's stage) as `flm train`: the CLI prints that one line and exits 2."""
    run = tmp_path / "plan"
    _full_safetensors(monkeypatch, run)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tomli_w.dumps(tiny_config_dict(tiny_corpus, prepared_dir, steps=4, ckpt_every=2, eval_every=0)))
    code = main(["run", str(cfg), "--out", str(run), "--set", "stages=[{steps=4}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("flm run: error: no space left on the device"), err
    _check_one_line_and_clean(run / "stage1", err[0].split("error: ", 1)[1])


def test_a_write_error_on_a_disk_with_room_is_not_called_full(tmp_path):
    assert not io.is_disk_full(RuntimeError("unexpected pos 704 vs 598"), tmp_path)
    assert io.is_disk_full(SafetensorError("I/O error: No space left on device (os error 28)"))
    assert not io.is_disk_full(FlmError("no space left on device"), tmp_path)  # already one line
