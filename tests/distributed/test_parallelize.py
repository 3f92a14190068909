"""Activation checkpointing changes no gradient (<= 1e-6, dropout included: the recompute replays the RNG), keeps
parameter names, recomputes the blocks it says, and leaves growth masks settable afterwards; in one process
``parallelize`` adds nothing else. (Under tp2 and tp2 x dp2 it is checked in test_tensor_parallel.)"""

from __future__ import annotations

import pytest
import torch
from torch.distributed.tensor import DTensor

from flm.config import TrainConfig
from flm.distributed.init import materialize, meta_model
from flm.distributed.mesh import ParallelDims
from flm.distributed.parallelize import apply_ac, parallelize
from flm.model import FLM

from ._common import ONE, SEED, batches, grown, tiny_cfg


def grads(model: FLM, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # dropout masks
    model(x, targets=y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_changes_no_gradient(mode):
    cfg = tiny_cfg(n_layers=4, dropout=0.1)
    x, y = batches(cfg, steps=1)[0]
    plain = materialize(meta_model(cfg), "cpu", SEED)
    ckpt = parallelize(materialize(meta_model(cfg), "cpu", SEED), ONE, None, TrainConfig(activation_checkpointing=mode))
    want, got = grads(plain, x, y), grads(ckpt, x, y)
    assert got.keys() == want.keys()  # the same parameter names: no wrapper module
    for name, g in want.items():
        assert (got[name] - g).abs().max() <= 1e-6, name
    recomputed = [k for k, b in ckpt.blocks.items() if "forward" in vars(b)]
    assert recomputed == (["0", "1", "2", "3"] if mode == "full" else ["1", "3"])


def test_checkpointing_recomputes_in_backward():
    calls = []
    model = apply_ac(materialize(meta_model(tiny_cfg()), "cpu", SEED), "full")
    model.blocks["0"].mlp.register_forward_pre_hook(lambda *_: calls.append(1))  # the recompute stops inside it
    x, y = batches(tiny_cfg(), steps=1)[0]
    model(x, targets=y).backward()
    assert len(calls) == 2  # forward, then again in the backward


def test_growth_masks_set_after_checkpointing():
    """Block.depth_new and the head/FFN masks land on the blocks themselves: m = 0 keeps the old function."""
    old, res = grown("depth")
    model = apply_ac(FLM(res.cfg), "full")
    model.load_state_dict(res.state_dict)
    model.load_growth_state(res.mask_state)
    assert model.blocks["1"].depth_new is not None
    x, _ = batches(res.cfg, steps=1)[0]
    with torch.no_grad():
        assert (model(x) - old(x)).abs().max() <= 1e-5


def test_one_process_has_no_dtensors():
    model = parallelize(meta_model(tiny_cfg()), ParallelDims(1, 1, 1, 1, sequence_parallel=True), None, TrainConfig())
    assert not any(isinstance(p, DTensor) for p in model.parameters())
