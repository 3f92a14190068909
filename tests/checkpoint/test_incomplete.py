"""A checkpoint whose manifest is gone is not taken as the newest: ``--resume`` says which one is incomplete and
which one it uses, and when it saves that step again it moves the incomplete folder aside instead of deleting
it."""

from __future__ import annotations

from flm.checkpoint import latest_checkpoint, verify_manifest
from flm.config import config_from_dict
from flm.train.loop import train_stage
from tests.conftest import tiny_config_dict


def test_resume_names_the_incomplete_checkpoint_and_keeps_it(tiny_corpus, prepared_dir, tmp_path, capsys):
    d = tiny_config_dict(tiny_corpus, prepared_dir, steps=4, ckpt_every=2, eval_every=0)
    d["train"]["keep_last"] = 5
    run = tmp_path / "run"
    train_stage(config_from_dict(d), run)
    step4 = run / "checkpoints" / "step_00000004"
    (step4 / "manifest.json").unlink()
    marker = (step4 / "trainer.json").read_bytes()
    capsys.readouterr()
    train_stage(config_from_dict(d), run, resume=True)
    err = capsys.readouterr().err
    step2 = run / "checkpoints" / "step_00000002"
    assert f"note: {step4} is incomplete (no manifest.json); resuming from {step2}" in err
    verify_manifest(latest_checkpoint(run))  # step 4 written again, complete
    (kept,) = (run / "checkpoints").glob(".incomplete-step_00000004-*")
    assert (kept / "trainer.json").read_bytes() == marker


def test_no_note_without_incomplete_checkpoints(tiny_corpus, prepared_dir, tmp_path, capsys):
    d = tiny_config_dict(tiny_corpus, prepared_dir, steps=4, ckpt_every=2, eval_every=0)
    train_stage(config_from_dict(d), tmp_path / "run")
    capsys.readouterr()
    train_stage(config_from_dict(d), tmp_path / "run", resume=True)
    assert "incomplete" not in capsys.readouterr().err
