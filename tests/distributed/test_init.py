"""Meta-device init: per-tensor-seeded muP values, bitwise the same for any layout (one process, a pipeline
stage holding a subset of the blocks, tp2, tp2 x dp2 with FSDP2), whatever order the tensors are visited in."""

from __future__ import annotations

import pytest
import torch

from flm.distributed.init import full_init, materialize, meta_model
from flm.mup import init_std

from ._common import SEED, tiny_cfg
from .conftest import TP2_VARIANTS, TP2DP2_VARIANTS


def one_process() -> dict[str, torch.Tensor]:
    return materialize(meta_model(tiny_cfg()), "cpu", SEED).state_dict()


def test_values_follow_the_mup_init_and_the_seed():
    cfg = tiny_cfg(d_model=64, n_heads=4, d_ff=256, vocab_size=1000)
    model = materialize(meta_model(cfg), "cpu", SEED)
    state = model.state_dict()
    assert all(t.device.type == "cpu" for t in state.values())
    for name in ("tok_emb.weight", "blocks.0.attn.q.weight", "blocks.1.mlp.down.weight"):
        assert abs(state[name].std().item() / init_std(cfg, name) - 1) < 0.05, name
    assert torch.equal(state["blocks.0.ln1.weight"], torch.ones(64))
    assert torch.equal(state["blocks.0.attn.o.bias"], torch.zeros(64))
    assert float(model.grow_m) == 0.0 and not model.growing
    assert torch.equal(state["blocks.0.mlp.up.weight"], full_init("blocks.0.mlp.up.weight", (256, 64), cfg, SEED,
                                                                   "cpu"))
    other = materialize(meta_model(cfg), "cpu", SEED + 1).state_dict()
    assert not torch.equal(other["blocks.0.attn.q.weight"], state["blocks.0.attn.q.weight"])
    # each tensor has its own stream: q, k and v of one block differ, and block 0 differs from block 1
    assert not torch.equal(state["blocks.0.attn.q.weight"], state["blocks.0.attn.k.weight"])
    assert not torch.equal(state["blocks.0.attn.q.weight"], state["blocks.1.attn.q.weight"])


def test_pipeline_stage_gets_the_same_values():
    """A stage that holds block 1 only (no embedding) gets bitwise the whole model's block 1."""
    full = one_process()
    stage = meta_model(tiny_cfg())
    del stage.blocks["0"]
    stage.tok_emb = None
    state = materialize(stage, "cpu", SEED).state_dict()
    assert set(state) == {k for k in full if not k.startswith(("blocks.0.", "tok_emb"))}
    assert all(torch.equal(state[k], full[k]) for k in state)


@pytest.mark.parametrize(("layout", "variant"), [("tp2", v) for v in TP2_VARIANTS] + [("tp2dp2", TP2DP2_VARIANTS[0])],
                         ids=lambda x: getattr(x, "name", x))
def test_bitwise_identical_across_layouts(request, layout, variant):
    got = request.getfixturevalue(layout)[variant.name]["init"]
    want = one_process()
    assert got.keys() == want.keys()
    for name, t in want.items():
        assert torch.equal(got[name], t), name
