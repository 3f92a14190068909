"""``flm data prepare`` onto a full disk (ENOSPC injected when a token shard is synced, and when the index is
written): one line naming the prepared_dir and "no space left on device", exit 2, no temporary folder left."""

from __future__ import annotations

import errno
import os

import pytest

from flm.cli import main
from flm.data import prepare


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fill_shards(monkeypatch) -> None:
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".bin"):
            _enospc()
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _fill_index(monkeypatch) -> None:
    monkeypatch.setattr(prepare, "atomic_write", _enospc)


@pytest.mark.parametrize("fill", [_fill_shards, _fill_index])
def test_prepare_onto_a_full_disk_is_one_line(tiny_corpus, tmp_path, monkeypatch, capsys, fill):
    prep = tmp_path / "prep"
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[model]\nvocab_size = 512\n\n[data]\nprepared_dir = "{prep}"\nworkers = 1\n'
                   f'[[data.train]]\npath = "{tiny_corpus / "train.jsonl"}"\n'
                   f'[[data.valid]]\npath = "{tiny_corpus / "valid.jsonl"}"\n[data.tokenizer]\nvocab_size = 300\n')
    fill(monkeypatch)
    assert main(["data", "prepare", str(cfg), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"flm data: error: no space left on device writing {prep};")
    assert "permissions" not in err[0]
    assert not prep.exists() or list(prep.iterdir()) == []  # no temporary folder, no half-written cache
