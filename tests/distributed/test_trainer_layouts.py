"""The trainer (``train_stage``: data loader, schedule, clipping, validation, checkpoints) under tp2, pp2,
tp2·dp2, pp2·dp2 and tp2·pp2 matches one process on the same global batch: the loss at each of 5 steps and
the final weights to 1e-4 relative, the validation loss too; a run stopped at step 3 and resumed under the same
layout ends bitwise where the uninterrupted one does. Bad layouts stop before anything is written."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from flm.checkpoint import latest_checkpoint
from flm.config import config_from_dict
from flm.distributed.env import DistEnv
from flm.train.loop import train_stage
from flm.train.metrics import read_metrics
from tests.conftest import tiny_config_dict

from ._harness import spawn
from ._train_workers import train_layouts

STEPS = 5
TWO = {"tp2": {"tp": 2}, "pp2": {"pp": 2}}
FOUR = {"tp2dp2": {"tp": 2}, "pp2dp2": {"pp": 2}, "tp2pp2": {"tp": 2, "pp": 2}}
ONE = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def cfg(tiny_corpus, prepared_dir) -> dict:
    cfg = tiny_config_dict(tiny_corpus, prepared_dir, steps=STEPS, batch_size=4, eval_every=STEPS, ckpt_every=3)
    cfg["optim"]["clip"] = 0.5  # clipping acts in the first steps
    return cfg


@pytest.fixture(scope="module")
def single(cfg, tmp_path_factory):
    """One process, and the data prepared before any rank starts."""
    out = tmp_path_factory.mktemp("single")
    train_stage(config_from_dict(cfg), out, env=ONE)
    return out


@pytest.fixture(scope="module")
def layouts(cfg, single, tmp_path_factory):
    """Run folders by layout name (one folder per spawn: each holds its own rendezvous file)."""
    two, four = tmp_path_factory.mktemp("two_ranks"), tmp_path_factory.mktemp("four_ranks")
    spawn(train_layouts, 2, two, cfg, TWO, 3, timeout=300)
    spawn(train_layouts, 4, four, cfg, FOUR, 3, timeout=400)
    return {name: (two if name in TWO else four) / name for name in [*TWO, *FOUR]}


def _weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def _log(run, key: str) -> list[float]:
    return [r[key] for r in read_metrics(run / "metrics.jsonl") if key in r]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("name", [*TWO, *FOUR])
def test_layout_matches_one_process(name, single, layouts):
    run = layouts[name] / "full"
    ref_loss, got_loss = _log(single, "loss"), _log(run, "loss")
    assert len(got_loss) == STEPS == len(ref_loss)
    for a, b in zip(got_loss, ref_loss):
        assert abs(a - b) <= 1e-4 * abs(b), (got_loss, ref_loss)
    assert abs(_log(run, "val_loss")[-1] - _log(single, "val_loss")[-1]) <= 1e-4 * _log(single, "val_loss")[-1]
    ref, got = _weights(single), _weights(run)
    assert ref.keys() == got.keys()
    worst = max(_rel(got[k], ref[k]) for k in ref)
    assert worst <= 1e-4, worst


@pytest.mark.parametrize("name", [*TWO, *FOUR])
def test_resume_under_the_same_layout_is_exact(name, layouts):
    full, cut = layouts[name] / "full", layouts[name] / "cut"
    assert _log(cut, "loss") == _log(full, "loss")
    a, b = _weights(full), _weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)
    opt_a = load_file(str(latest_checkpoint(full) / "optim.safetensors"))
    opt_b = load_file(str(latest_checkpoint(cut) / "optim.safetensors"))
    assert opt_a.keys() == opt_b.keys() and all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)
