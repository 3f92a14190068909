"""MSG operators: function preservation (fp32, dropout 0, random non-zero new weights), masks, ramp,
optimizer state, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flm.config import GrowthConfig
from flm.errors import FlmError
from flm.growth import MaskRamp, grow, grow_model, make_plan
from flm.growth.plan import layer_layout, param_shapes
from flm.model import FLM

from ._util import TOL, generic_model, grown_model, max_delta, mup_tiny, tiny, tokens

CONFIGS = {
    "sp": tiny(xpos=False),
    "mup_xpos": mup_tiny(),
    # attention width apart from d_model (head_dim set), so width and heads grow independently
    "mup_decoupled": mup_tiny(head_dim=8, n_heads=3),
    # the released FLM-101B's GPT-2 attention options: block i's logits divided by i + 1, in fp32
    "release_attn": mup_tiny(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True),
}

OPERATORS = {
    "width": GrowthConfig(d_model=64, n_heads=4),
    "width_heads_follow": GrowthConfig(d_model=48),
    "heads": GrowthConfig(n_heads=6),
    "ffn": GrowthConfig(d_ff=200),
    "depth_top_copy": GrowthConfig(n_layers=4),
    "depth_interleave": GrowthConfig(n_layers=5, depth_position="interleave"),
    "depth_positions_random": GrowthConfig(n_layers=4, depth_position=[0, 2], depth_init="random"),
    "depth_copy_from": GrowthConfig(n_layers=3, depth_copy_from=0),
    "width_heads_ffn": GrowthConfig(d_model=64, n_heads=8, d_ff=300),
    "all_four": GrowthConfig(d_model=64, n_heads=6, d_ff=300, n_layers=5, depth_position="interleave"),
}


@pytest.mark.parametrize("cfg_name", CONFIGS)
@pytest.mark.parametrize("op", OPERATORS)
def test_function_preserved(cfg_name: str, op: str) -> None:
    cfg, growth = CONFIGS[cfg_name], OPERATORS[op]
    if cfg.attn_dim != cfg.d_model and op == "width_heads_follow":
        growth = GrowthConfig(d_model=48, n_heads=5)
    assert max_delta(cfg, growth) <= TOL


def test_without_masks_the_function_changes() -> None:
    """The preservation above comes from the masks: the same grown weights without them differ."""
    cfg = mup_tiny()
    model = generic_model(cfg)
    x = tokens(cfg)
    res = grow(cfg, model.state_dict(), OPERATORS["all_four"], seed=1)
    plain = FLM(res.cfg).eval()
    plain.load_state_dict(res.state_dict)
    with torch.no_grad():
        assert (plain(x) - model(x)).abs().max().item() > 1e-3


def test_grown_shapes_and_corner_copies() -> None:
    cfg = mup_tiny()
    model = generic_model(cfg)
    old = model.state_dict()
    res = grow(cfg, old, GrowthConfig(d_model=64, d_ff=200, n_layers=3), seed=3)
    assert res.cfg.shape() == {"d_model": 64, "n_layers": 3, "n_heads": 8, "head_dim": 8, "d_ff": 200}
    assert {k: tuple(v.shape) for k, v in res.state_dict.items()} == param_shapes(res.cfg)
    q = res.state_dict["blocks.1.attn.q.weight"]
    assert torch.equal(q[:32, :32], old["blocks.1.attn.q.weight"])
    assert q[32:].abs().sum() > 0 and q[:32, 32:].abs().sum() > 0  # new entries are random, non-zero
    # the new top block (copy of old block 1): old values in its corner
    assert torch.equal(res.state_dict["blocks.2.mlp.up.weight"][:128, :32], old["blocks.1.mlp.up.weight"])
    # muP init of the new width: hidden std sigma / sqrt(fan_in / base)
    new_rows = res.state_dict["blocks.0.mlp.up.weight"][128:]
    assert new_rows.std().item() == pytest.approx(cfg.init_std / (64 / 16) ** 0.5, rel=0.1)
    assert torch.equal(res.state_dict["ln_f.weight"][32:], torch.ones(32))
    assert torch.equal(res.state_dict["blocks.0.attn.o.bias"][32:], torch.zeros(32))
    # the tied embedding grows once: there is no separate readout weight
    assert not any("lm_head" in k for k in res.state_dict)
    assert res.state_dict["tok_emb.weight"].shape == (cfg.padded_vocab_size, 64)


def test_mask_state_and_readout_multiplier() -> None:
    cfg = mup_tiny()
    spec = GrowthConfig(d_model=64, d_ff=200, n_layers=3, depth_position=[1])
    kept = grow(cfg, FLM(cfg).state_dict(), spec)  # default readout = "keep": no multiplier to move
    assert "readout_mult_from" not in kept.mask_state and kept.cfg.output_mult == 2 * cfg.output_mult
    res = grow(cfg, FLM(cfg).state_dict(), spec.model_copy(update={"readout": "mup"}))
    ms = res.mask_state
    assert float(ms["grow_m"]) == 0.0
    assert ms["hidden_new"].tolist() == [False] * 32 + [True] * 32
    assert res.cfg.output_mult == cfg.output_mult
    assert ms["readout_mult_from"].item() == pytest.approx(cfg.output_mult / cfg.width_mult)
    assert bool(ms["blocks.1.depth_new"]) and "blocks.1.head_new" not in ms
    assert ms["blocks.0.head_new"].sum() == 4 and ms["blocks.2.ffn_new"].sum() == 72
    model = grown_model(res)
    assert model.growing and model.readout_mult_from == pytest.approx(1.0)
    assert "hidden_new" not in model.state_dict()  # masks travel in growth_state(), not in the weights


def test_depth_copies_are_copies_not_aliases() -> None:
    cfg = tiny()
    state = FLM(cfg).state_dict()
    res = grow(cfg, state, GrowthConfig(n_layers=3))
    a, b = res.state_dict["blocks.1.mlp.up.weight"], res.state_dict["blocks.2.mlp.up.weight"]
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_layer_layouts() -> None:
    assert layer_layout(3, GrowthConfig(n_layers=5), 5) == [0, 1, 2, None, None]
    assert layer_layout(4, GrowthConfig(depth_position="interleave"), 8) == [
        0,
        None,
        1,
        None,
        2,
        None,
        3,
        None,
    ]
    assert layer_layout(4, GrowthConfig(depth_position="interleave"), 6) == [0, 1, None, 2, 3, None]
    assert layer_layout(2, GrowthConfig(depth_position=[0, 3]), 4) == [None, 0, 1, None]
    plan = make_plan(tiny(n_layers=2), GrowthConfig(n_layers=4, depth_position=[0, 3]))
    assert plan.copy_source == {0: 0, 3: 1}  # the old block below, or above at the bottom


def test_composition_width_heads_ffn_then_depth() -> None:
    """Width + heads + FFN in one step, ramp to the end, then depth: each growth preserves the function."""
    cfg = mup_tiny()
    model = generic_model(cfg)
    x = tokens(cfg)
    with torch.no_grad():
        ref = model(x)
    g1 = grow_model(model, GrowthConfig(d_model=64, n_heads=8, d_ff=256, ramp_steps=3))
    with torch.no_grad():
        assert (g1.model(x) - ref).abs().max().item() <= TOL
    for _ in range(3):
        g1.ramp.step(g1.model)
    assert not g1.model.growing
    with torch.no_grad():
        ref2 = g1.model(x)
    g2 = grow_model(g1.model, GrowthConfig(n_layers=4, depth_position="interleave"), seed=5)
    with torch.no_grad():
        assert (g2.model(x) - ref2).abs().max().item() <= TOL


def _adam_moments(model: FLM, steps: int = 2) -> tuple[dict[str, torch.Tensor], int]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = tokens(model.cfg)
    for _ in range(steps):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    names = dict(model.named_parameters())
    out = {}
    for n, p in names.items():
        out[f"exp_avg/{n}"] = opt.state[p]["exp_avg"].clone()
        out[f"exp_avg_sq/{n}"] = opt.state[p]["exp_avg_sq"].clone()
    return out, int(opt.state[names["tok_emb.weight"]]["step"])


def test_optimizer_state_copied_into_old_slice_zeros_elsewhere() -> None:
    cfg = mup_tiny()
    model = FLM(cfg).train()
    moments, step = _adam_moments(model)
    growth = GrowthConfig(d_model=64, n_heads=6, d_ff=200, n_layers=3)
    res = grow(cfg, model.state_dict(), growth, moments)
    assert res.optim_state is not None
    # the new block (its weights a copy of block 1) has no moments: AdamW starts it fresh, at step 0
    assert set(res.optim_state) == {
        f"{k}/{n}" for n in res.state_dict if not n.startswith("blocks.2.") for k in ("exp_avg", "exp_avg_sq")
    }
    for key, t in res.optim_state.items():
        kind, name = key.split("/", 1)
        assert t.shape == res.state_dict[name].shape
        old = moments[key]
        corner = tuple(slice(0, s) for s in old.shape)
        assert torch.equal(t[corner], old)
        rest = t.clone()
        rest[corner] = 0
        assert not rest.any()
    assert res.optim_state["exp_avg_sq/blocks.0.attn.q.weight"].abs().sum() > 0
    # reset instead of copy
    assert (
        grow(
            cfg, model.state_dict(), growth.model_copy(update={"reset_optimizer": True}), moments
        ).optim_state
        is None
    )
    # step is kept: the moments load into a new AdamW with the old step count
    g = grow_model(model, growth, moments)
    opt = torch.optim.AdamW(g.model.parameters(), lr=1e-3)
    params = dict(g.model.named_parameters())
    state = {
        i: {"step": torch.tensor(float(step)), "exp_avg": g.optim_state[f"exp_avg/{n}"],
            "exp_avg_sq": g.optim_state[f"exp_avg_sq/{n}"]}
        for i, n in enumerate(params) if f"exp_avg/{n}" in g.optim_state
    }  # fmt: skip
    opt.load_state_dict(
        {"state": state, "param_groups": [{**opt.param_groups[0], "params": list(range(len(params)))}]}
    )
    assert int(opt.state[params["blocks.0.attn.q.weight"]]["step"]) == step == 2


def test_mid_ramp_model_trains() -> None:
    cfg = mup_tiny()
    model = generic_model(cfg).train()
    g = grow_model(model, GrowthConfig(d_model=64, d_ff=200, n_heads=6, n_layers=3, ramp_steps=100))
    g.model.set_mask_value(0.5)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(g.model.parameters(), lr=3e-3)
    x = tokens(cfg, batch=4, seq=24)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(g.model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    # the new parameters learn too (their gradients pass through the masks at m = 0.5)
    assert g.model.blocks["2"].mlp.up.weight.grad.abs().sum() > 0
    assert g.model.tok_emb.weight.grad[:, 32:].abs().sum() > 0


def test_ramp_is_linear_then_removes_every_mask() -> None:
    cfg = mup_tiny()
    g = grow_model(generic_model(cfg), GrowthConfig(d_model=64, d_ff=200, n_layers=3, ramp_steps=4))
    model, ramp = g.model, g.ramp
    seen = [float(model.grow_m)]
    for _ in range(3):
        ramp.step(model)
        seen.append(float(model.grow_m))
    assert seen == [0.0, 0.25, 0.5, 0.75]
    assert model.growing
    with torch.no_grad():
        model.set_mask_value(1.0)
        at_one = model(tokens(cfg))
        model.set_mask_value(0.75)
    ramp.step(model)
    assert not ramp.active and not model.growing
    assert model.readout_mult_from is None
    assert [n for n, _ in model.named_buffers()] == ["grow_m"]  # no mask buffer left anywhere
    plain = FLM(model.cfg).eval()
    plain.load_state_dict(model.state_dict(), strict=True)
    model.eval()
    with torch.no_grad():
        after = model(tokens(cfg))
        assert torch.allclose(after, plain(tokens(cfg)), atol=0, rtol=0)  # the same plain forward
        assert (after - at_one).abs().max().item() <= 1e-5  # m = 1 with masks == no masks
    ramp.step(model)  # past the end: nothing happens
    assert ramp.state_dict() == {"step": 4, "total": 4}


def test_resume_mid_ramp_from_saved_state() -> None:
    cfg = mup_tiny()
    g = grow_model(generic_model(cfg), GrowthConfig(d_model=64, n_layers=3, ramp_steps=10))
    for _ in range(4):
        g.ramp.step(g.model)
    weights, masks, ramp_state = g.model.state_dict(), g.model.growth_state(), g.ramp.state_dict()
    again = FLM(g.model.cfg).eval()
    again.load_state_dict(weights, strict=True)
    again.load_growth_state(masks)
    ramp = MaskRamp.from_state(ramp_state)
    ramp.apply(again)
    g.model.eval()
    with torch.no_grad():
        assert torch.equal(again(tokens(cfg)), g.model(tokens(cfg)))
    ramp.step(again)
    assert float(again.grow_m) == pytest.approx(0.5)


def test_grow_model_keeps_dtype_and_refuses_a_second_growth() -> None:
    cfg = tiny()
    model = FLM(cfg).to(torch.float64)
    g = grow_model(model, GrowthConfig(d_model=64, ramp_steps=5))
    assert g.model.tok_emb.weight.dtype == torch.float64 and g.optim_state is None
    with pytest.raises(FlmError, match="still running"):
        grow_model(g.model, GrowthConfig(n_layers=3))
    with pytest.raises(FlmError, match="still running"):
        grow(g.model.cfg, {**g.model.state_dict(), **g.model.growth_state()}, GrowthConfig(n_layers=3))


def test_zero_ramp_means_no_masks() -> None:
    g = grow_model(FLM(tiny()), GrowthConfig(d_model=64, ramp_steps=0))
    assert not g.model.growing and not g.ramp.active


def test_same_seed_same_weights_and_generator() -> None:
    cfg = tiny()
    state = FLM(cfg).state_dict()
    a = grow(cfg, state, GrowthConfig(d_model=64), seed=7).state_dict
    b = grow(cfg, state, GrowthConfig(d_model=64), seed=7).state_dict
    c = grow(cfg, state, GrowthConfig(d_model=64), generator=torch.Generator().manual_seed(1)).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["tok_emb.weight"], c["tok_emb.weight"])


@pytest.mark.parametrize(
    ("growth", "match"),
    [
        (GrowthConfig(d_model=16), "smaller than the current 32"),
        (GrowthConfig(n_layers=1), "smaller than the current 2"),
        (GrowthConfig(d_model=36), "not a multiple of head_dim 8"),
        (GrowthConfig(n_layers=4, depth_position=[0, 0]), "distinct block indices"),
        (GrowthConfig(n_layers=4, depth_position=[1, 9]), r"\[0, 4\)"),
        (GrowthConfig(depth_position=[1]), "n_layers does not grow"),
        (GrowthConfig(n_layers=3, depth_copy_from=2), "only 2 layers"),
    ],
)
def test_impossible_growths_are_clear_errors(growth: GrowthConfig, match: str) -> None:
    with pytest.raises(FlmError, match=match):
        grow(tiny(), FLM(tiny()).state_dict(), growth)


def test_state_that_does_not_match_its_config() -> None:
    state = FLM(tiny()).state_dict()
    state["blocks.1.mlp.up.weight"] = torch.zeros(100, 32)
    with pytest.raises(FlmError, match=r"blocks.1.mlp.up.weight has shape \(100, 32\).*needs \(128, 32\)"):
        grow(tiny(), state, GrowthConfig(d_model=64))
    with pytest.raises(FlmError, match="missing"):
        grow(tiny(n_layers=3), FLM(tiny()).state_dict(), GrowthConfig(d_model=64))


def test_param_shapes_match_the_model() -> None:
    for cfg in (tiny(), mup_tiny(head_dim=8, n_heads=3, d_ff=72, n_layers=3)):
        assert param_shapes(cfg) == {k: tuple(v.shape) for k, v in FLM(cfg).state_dict().items()}


def test_moved_blocks_keep_their_inverse_layer_factor_until_the_ramp_moves_it() -> None:
    """scale_attn_by_inverse_layer_idx ties a block's attention to its index: interleaved depth growth moves
    old block 2 to index 3, so it keeps 1/3 at m = 0 (without that the logits change), reaches 1/4 at m = 1,
    and after the ramp the grown model is the plain model of the new config (the release's architecture)."""
    cfg = mup_tiny(scale_attn_by_inverse_layer_idx=True, n_layers=3)
    old = generic_model(cfg)
    with torch.no_grad():  # sharp attention, so that its scale shows in the logits
        for b in old.blocks.values():
            b.attn.q.weight.mul_(8.0)
            b.attn.k.weight.mul_(8.0)
    x = tokens(cfg)
    delta = lambda a, b: float((a - b).abs().max())  # noqa: E731
    res = grow(cfg, old.state_dict(), GrowthConfig(n_layers=5, depth_position="interleave"), seed=0)
    assert res.plan.layer_source == [0, 1, None, 2, None]
    assert {k: int(v) for k, v in res.mask_state.items() if k.endswith("layer_from")} == {"blocks.3.layer_from": 2}
    with torch.no_grad():
        ref = old(x)
        model = grown_model(res)
        assert delta(model(x), ref) < TOL
        model.load_growth_state({k: v for k, v in res.mask_state.items() if not k.endswith("layer_from")})
        assert delta(model(x), ref) > 10 * TOL  # the factors are what keeps the function
        model.load_growth_state(res.mask_state)
        model.set_mask_value(1.0)
        at_one = model(x)
        model.end_growth()
        plain = FLM(res.cfg).eval()
        plain.load_state_dict(res.state_dict)
        assert delta(at_one, plain(x)) < TOL and delta(model(x), plain(x)) == 0
