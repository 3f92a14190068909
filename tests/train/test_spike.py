"""``train.spike`` with ``action = "rollback"``: a spike (a poisoned loss, injected) reloads the last good
checkpoint and the run reads on after the bad batch; the result is bitwise a run that never saw the batches
from the checkpoint up to the bad one. Without a checkpoint yet the step is skipped and the log says so; past
max_events the run stops with one line."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from flm.checkpoint import latest_checkpoint
from flm.checkpoint.model_state import ModelState
from flm.config import config_from_dict
from flm.distributed.env import DistEnv
from flm.errors import FlmError
from flm.train.loop import Trainer, train_stage
from flm.train.metrics import read_metrics
from flm.train.spike import ROLLED_BACK, SKIPPED, describe
from tests.train.test_loop import _spiky

ONE = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
BATCH = 4


def _cfg(tiny_cfg, **spike):
    d = tiny_cfg(steps=8, eval_every=0, ckpt_every=3, keep_last=5, batch_size=BATCH)
    d["train"]["spike"] = {"factor": 2.0, "window": 5, "action": "rollback", "max_events": 3} | spike
    return config_from_dict(d)


def _tensors(run) -> tuple[dict, dict]:
    folder = latest_checkpoint(run)
    return load_file(str(folder / "model.safetensors")), load_file(str(folder / "optim.safetensors"))


def _events(run) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if "event" in r]


def test_rollback_equals_a_run_that_never_saw_the_bad_batches(tiny_cfg, tmp_path, capsys):
    cfg = _cfg(tiny_cfg)
    spiked = tmp_path / "spiked"
    trainer = Trainer(cfg, spiked, env=ONE)
    _spiky(trainer, {5: 100.0})  # step 6's loss: rolled back to step 3, the batches of steps 4, 5, 6 never trained
    trainer.fit()
    assert "step 6: loss 100 above 2 x the running mean" in capsys.readouterr().err

    ref = tmp_path / "ref"  # the same run to step 3, then the data stream moved on by 3 batches
    train_stage(cfg, ref, env=ONE, stop_after=3)
    clean = Trainer(cfg, ref, env=ONE)
    clean.restore(latest_checkpoint(ref))
    state = clean.loader.state_dict()
    state["samples"] += 3 * BATCH
    state["counts"] = [c + 3 * BATCH for c in state["counts"]]
    clean.loader.load_state_dict(state)
    clean.fit()

    for a, b in zip(_tensors(spiked), _tensors(ref)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] for run in (spiked, ref)]
    assert losses[0] == losses[1] and len(losses[0]) == 8  # the discarded steps 4, 5 are gone from the log
    (event,) = _events(spiked)
    assert event["event"] == ROLLED_BACK and event["to_step"] == 3 and event["step"] == event["spike_step"] == 6
    assert event["skipped_samples"] == [3 * BATCH, 6 * BATCH]
    assert event["data_from"]["samples"] == 3 * BATCH and event["data"]["samples"] == 6 * BATCH
    assert event["checkpoint"].endswith("step_00000003")
    assert describe(event).endswith("(step 3), skipping global samples 12..23")


def test_a_run_killed_after_a_rollback_replays_it_on_resume(tiny_cfg, tmp_path):
    """Stopped after step 5 (no checkpoint since step 3, as a kill -9), then resumed: the resume replays the spike
    and the rollback, and ends with the log and weights of the uninterrupted run (the rollback logged once)."""
    cfg = _cfg(tiny_cfg)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    trainer = Trainer(cfg, whole, env=ONE)
    _spiky(trainer, {5: 100.0})
    trainer.fit()
    trainer = Trainer(cfg, cut, env=ONE)
    _spiky(trainer, {5: 100.0})
    trainer.fit(stop_after=5)  # rolled back at step 6 to 3, trained steps 4 and 5 again, then killed
    assert latest_checkpoint(cut).name == "step_00000003"
    trainer = Trainer(cfg, cut, env=ONE)
    trainer.restore(latest_checkpoint(cut))
    _spiky(trainer, {2: 100.0})  # the same batch: the third step after the checkpoint
    trainer.fit()
    keys = ("step", "loss", "event", "skipped_samples", "grad_norm")
    logs = [[{k: r[k] for k in keys if k in r} for r in read_metrics(run / "metrics.jsonl")] for run in (whole, cut)]
    assert logs[0] == logs[1] and sum("event" in r for r in logs[1]) == 1
    for a, b in zip(_tensors(whole), _tensors(cut)):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_rollback_restores_the_checkpoint_then_reads_on_after_the_bad_batch(tiny_cfg, tmp_path):
    trainer = Trainer(_cfg(tiny_cfg), tmp_path / "a", env=ONE)
    _spiky(trainer, {5: float("nan")})
    trainer._it = iter(trainer.loader)
    for _ in range(3):
        trainer.train_step()
    folder = trainer.save()
    saved = load_file(str(folder / "model.safetensors"))
    moments = load_file(str(folder / "optim.safetensors"))
    for _ in range(2):
        assert trainer.train_step() is not None
    assert trainer.train_step() is None  # NaN at step 6
    assert trainer.counters.step == 3 and trainer.spike.events == 1
    weights = ModelState(trainer.model).full_model_state()
    assert all(torch.equal(weights[k], saved[k]) for k in saved)
    optim, _ = ModelState(trainer.model).full_optim_state(trainer.optimizer)
    assert all(torch.equal(optim[k], moments[k]) for k in moments)
    assert trainer.loader.state_dict()["samples"] == 6 * BATCH  # the next batch is the one after the bad one
    done = trainer.train_step()
    assert done is not None and all(map(torch.isfinite, map(torch.tensor, done))) and trainer.counters.step == 4


def test_rollback_without_a_checkpoint_skips_and_says_so(tiny_cfg, tmp_path, capsys):
    trainer = Trainer(_cfg(tiny_cfg), tmp_path / "a", env=ONE)
    _spiky(trainer, {1: float("nan")})
    trainer._it = iter(trainer.loader)
    trainer.train_step()
    assert trainer.train_step() is None and trainer.counters.step == 1
    assert "step 2 skipped: non-finite loss nan" in capsys.readouterr().err
    (event,) = _events(tmp_path / "a")
    assert event["event"] == SKIPPED and "no checkpoint to roll back to yet" in event["note"]


def test_rollbacks_past_max_events_stop_the_run(tiny_cfg, tmp_path):
    trainer = Trainer(_cfg(tiny_cfg, max_events=1), tmp_path / "a", env=ONE)
    _spiky(trainer, {4: float("nan"), 5: float("nan")})
    with pytest.raises(FlmError, match=r"step 4: 2 loss spikes rolled back or skipped by train.spike \(max_events = 1"):
        trainer.fit()
    events = _events(tmp_path / "a")  # the second rollback (to the same checkpoint) keeps the first's line
    assert [(e["event"], e["step"], e["to_step"]) for e in events] == [(ROLLED_BACK, 5, 3), (ROLLED_BACK, 4, 3)]
