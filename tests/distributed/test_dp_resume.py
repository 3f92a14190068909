"""Resume with another number of data-parallel ranks, dp 2 -> 1 -> 2 (full checkpoints): a run stopped at step 2
under two gloo ranks, resumed to step 4 in one process, then to the end under two ranks again, trains on the
same samples in the same order with the same global batch as an uninterrupted dp2 run (the loader's sample k
is a function of k alone, and ``train.batch_size`` is global), so its losses match that run's at every step.

Not bitwise, and why: under dp2 each rank sums the loss of its half of the batch and FSDP2 averages the two
halves' gradients (a reduce-scatter); in one process the same rows are summed in one matmul. The same numbers
added in another order differ in the last bits of fp32, and AdamW carries that on: it divides each gradient by
its running RMS, so an element whose gradient is near zero takes a full-size step whichever way its last bits
point. Measured after 6 steps: losses within 8e-8 relative, moments within 1e-6, weights within 1.1e-5 (the
worst tensor's norm); the test holds them to 1e-6, 1e-5 and 5e-5."""

from __future__ import annotations

import pytest
import torch

from flm.checkpoint import latest_checkpoint, load_checkpoint
from flm.config import config_from_dict
from flm.distributed.env import DistEnv
from flm.train.loop import train_stage
from flm.train.metrics import read_metrics
from tests.conftest import tiny_config_dict

from ._harness import spawn
from ._train_workers import train_then_resume

ONE = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
STEPS = 6


@pytest.fixture(scope="module")
def runs(tiny_corpus, prepared_dir, tmp_path_factory):
    cfg = tiny_config_dict(tiny_corpus, prepared_dir, steps=STEPS, batch_size=4, micro_batch_size=1, eval_every=0,
                           ckpt_every=2, keep_last=5)
    root = tmp_path_factory.mktemp("dp_resume")
    train_stage(config_from_dict(cfg), root / "prepare", env=ONE, stop_after=1)  # the data, before any rank starts
    full, cut = root / "full", root / "cut"
    spawn(train_then_resume, 2, tmp_path_factory.mktemp("dp2_first"), cfg,
          [(str(full), {}, None, False), (str(cut), {}, 2, False)], timeout=300)
    train_stage(config_from_dict(cfg), cut, env=ONE, resume=True, stop_after=4)
    spawn(train_then_resume, 2, tmp_path_factory.mktemp("dp2_again"), cfg, [(str(cut), {}, None, True)], timeout=300)
    return full, cut


def _losses(run) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def test_dp2_to_1_to_2_matches_an_uninterrupted_dp2_run(runs):
    full, cut = runs
    ref, got = _losses(full), _losses(cut)
    assert len(got) == len(ref) == STEPS
    assert all(abs(a - b) <= 1e-6 * b for a, b in zip(got, ref)), (got, ref)
    a, _ = load_checkpoint(latest_checkpoint(full))
    b, _ = load_checkpoint(latest_checkpoint(cut))
    assert a.trainer["loader"] == b.trainer["loader"] and b.trainer["step"] == STEPS  # the same data position
    assert max(_rel(b.model[k], a.model[k]) for k in a.model) <= 5e-5
    assert max(_rel(b.optim_tensors[k], a.optim_tensors[k]) for k in a.optim_tensors) <= 1e-5
