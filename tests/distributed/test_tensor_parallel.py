"""Tensor parallel (tp2, tp2 x dp2 on gloo ranks) against one process: 5 AdamW steps with clipping give the
same losses and final weights (1e-4 relative), with and without sequence parallel, activation checkpointing,
the fused vocabulary-parallel readout or logits + loss_parallel; every MSG growth loaded into a tp2 model keeps
the logits at m = 0 and ramps like the one-process model."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from flm.distributed.init import materialize, meta_model
from flm.loss import linear_cross_entropy
from flm.model import FLM

from ._common import RAMP, SEED, batches, grown, ramp_data, readout_case, rel_err, tiny_cfg, train
from .conftest import TP2_GROWTHS, TP2_VARIANTS, TP2DP2_VARIANTS

pytestmark = pytest.mark.timeout(300)  # the session fixtures spawn ranks (each spawn has its own hard timeout)

TOL = 1e-4


@cache
def reference(fused: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One process, the same init, batches and steps."""
    model = materialize(meta_model(tiny_cfg()), "cpu", SEED)
    losses = train(model, batches(tiny_cfg()), fused=fused)
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_matches_one_process(result: dict, fused: bool) -> None:
    ref_losses, ref_weights = reference(fused)
    assert len(result["losses"]) == len(ref_losses) == 5
    for step, (got, want) in enumerate(zip(result["losses"], ref_losses)):
        assert abs(got - want) <= TOL * abs(want), f"step {step}: loss {got} != {want}"
    assert result["final"].keys() == ref_weights.keys()
    for name, want in ref_weights.items():
        assert rel_err(result["final"][name], want) <= TOL, name
    moved = max(rel_err(result["final"][n], result["init"][n]) for n in ref_weights if "weight" in n)
    assert moved > 1e-3  # the steps did train


@pytest.mark.parametrize("variant", TP2_VARIANTS, ids=lambda v: v.name)
def test_tp2_matches_one_process(tp2, variant):
    check_matches_one_process(tp2[variant.name], variant.fused)


@pytest.mark.parametrize("variant", TP2DP2_VARIANTS, ids=lambda v: v.name)
def test_tp2_dp2_matches_one_process(tp2dp2, variant):
    check_matches_one_process(tp2dp2[variant.name], variant.fused)


@pytest.mark.parametrize(("sp", "kind"), [(sp, kind) for sp, kinds in TP2_GROWTHS for kind in kinds],
                         ids=lambda x: {True: "sequence-parallel", False: "tp2"}.get(x, x))
def test_growth_under_tp2_keeps_function_and_ramps(tp2, kind, sp):
    got = tp2[f"grow {kind},sp={sp}"]
    old, res = grown(kind)
    # m = 0: the grown, sharded model computes the old function (on the real vocabulary and the padding)
    assert (got["logits"] - got["old_logits"]).abs().max() <= 1e-5
    # the masks come back whole for a checkpoint; each rank held only its slice of heads / FFN units
    assert got["masks"].keys() == res.mask_state.keys()
    assert all(torch.equal(got["masks"][k], v) for k, v in res.mask_state.items())
    for local, key in zip(got["local_masks"], [f"blocks.{i}.{m}" for m in ("head_new", "ffn_new")
                                               for i in range(res.cfg.n_layers)]):
        if key in res.mask_state:  # rank 0 holds the first half
            assert torch.equal(local, res.mask_state[key][: len(res.mask_state[key]) // 2])
    # the ramp trains, exactly as the one-process grown model does
    ref = FLM(res.cfg)
    ref.load_state_dict(res.state_dict)
    ref.load_growth_state(res.mask_state)
    want = train(ref, ramp_data(res.cfg), fused=True, ramp=RAMP)
    assert all(abs(a - b) <= TOL * b for a, b in zip(got["ramp"], want)), (got["ramp"], want)
    assert got["ramp"][-1] < got["ramp"][0]


@pytest.mark.parametrize("layout", ["tp2", "tp2dp2"])
def test_vocab_parallel_readout_matches_fused(request, layout):
    got = request.getfixturevalue(layout)["readout"]
    h, w, y, wts = readout_case()
    h.requires_grad_()
    w.requires_grad_()
    loss = linear_cross_entropy(h, w, y, wts, chunk=64)
    loss.backward()
    assert abs(float(got["loss"]) - loss.item()) <= 1e-6 * loss.item()
    assert rel_err(got["dh"], h.grad) <= 1e-5
    assert rel_err(got["dw"], w.grad) <= 1e-5
