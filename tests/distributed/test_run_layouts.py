"""``flm run`` whose stages change layout at each growth (dp2 -> tp2 after a width growth -> pp2 after a depth
growth, on 2 ranks, sharded checkpoints: each growth builds the new layout's shards tensor by tensor from the
previous stage's shards): the validation loss right after each growth equals the loss right before it, and
every logged loss matches the same plan in one process (full checkpoints, in-memory growth)."""

from __future__ import annotations

import copy

import pytest
import torch

from flm.config import config_from_dict
from flm.distributed.env import DistEnv
from flm.train.metrics import read_metrics
from flm.train.run import run_plan, stage_summaries
from tests.conftest import tiny_config_dict

from ._harness import spawn
from ._train_workers import run_layouts

ONE = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def plan(tiny_corpus, prepared_dir) -> dict:
    base = tiny_config_dict(tiny_corpus, prepared_dir, ckpt_every=4, eval_every=4)
    base["stages"] = [
        {"steps": 4},
        {"steps": 4, "grow": {"d_model": 64, "ramp_steps": 2}},
        {"steps": 4, "grow": {"n_layers": 4, "ramp_steps": 2, "depth_position": "interleave"}},
    ]
    return base


@pytest.fixture(scope="module")
def runs(plan, tmp_path_factory):
    single = tmp_path_factory.mktemp("single")
    run_plan(config_from_dict(plan), single / "run", env=ONE)  # also prepares the data before the ranks start
    layouts = copy.deepcopy(plan)
    for stage, parallel in zip(layouts["stages"], [{"dp": 2}, {"tp": 2}, {"pp": 2}]):
        stage["parallel"] = parallel
    layouts["train"]["checkpoint_format"] = "sharded"  # each growth reads the previous stage's shards
    spread = tmp_path_factory.mktemp("spread")
    spawn(run_layouts, 2, spread, layouts, timeout=400)
    return single / "run", spread / "run"


def _losses(run) -> list[tuple]:
    return [(r["stage"], r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(run / "metrics.jsonl")]


def test_growth_across_layouts_preserves_the_function(runs):
    sums = stage_summaries(runs[1])
    assert [(s["d_model"], s["n_layers"]) for s in sums] == [(32, 2), (64, 2), (64, 4)]
    for before, after in zip(sums, sums[1:]):
        assert after["val_start"] == pytest.approx(before["val_end"], rel=1e-5)
    assert sums[-1]["val_end"] < sums[0]["val_end"]


def test_run_across_layouts_matches_one_process(runs):
    ref, got = _losses(runs[0]), _losses(runs[1])
    assert [r[:2] for r in got] == [r[:2] for r in ref]
    for a, b in zip(got, ref):
        for x, y in zip(a[2:], b[2:]):
            assert (x is None) == (y is None)
            if x is not None:
                assert x == pytest.approx(y, rel=1e-4), (a, b)
