"""A checkpoint write that runs out of disk (ENOSPC, injected) stops training with one line naming the newest
complete checkpoint; that checkpoint is intact and no temporary folder is left behind."""

from __future__ import annotations

import errno

import pytest

from flm.checkpoint import latest_checkpoint, store, verify_manifest
from flm.config import config_from_dict
from flm.errors import FlmError
from flm.train.loop import train_stage
from tests.conftest import tiny_config_dict


def test_disk_full_during_a_checkpoint_write(tiny_corpus, prepared_dir, tmp_path, monkeypatch):
    real = store._save_tensors

    def full_disk(tensors, path):
        if "step_00000004" in str(path):  # the second checkpoint
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(tensors, path)

    monkeypatch.setattr(store, "_save_tensors", full_disk)
    cfg = config_from_dict(tiny_config_dict(tiny_corpus, prepared_dir, steps=4, ckpt_every=2, eval_every=0))
    run = tmp_path / "run"
    with pytest.raises(FlmError) as e:
        train_stage(cfg, run)
    msg = str(e.value)
    assert "\n" not in msg and "no space left on the device writing checkpoint" in msg
    assert "step_00000002" in msg and msg.endswith("free space, then --resume")
    newest = latest_checkpoint(run)
    assert newest is not None and newest.name == "step_00000002"
    verify_manifest(newest)  # intact
    assert not list((run / "checkpoints").glob(".tmp-*"))
