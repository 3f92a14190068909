"""Literature growth baselines (flm.growth.baselines): G_stack's layer mapping, HyperCloning's and Net2Net's
function preservation (fp32, dropout 0, perturbed models so nothing passes by accident), the shapes they reach
(equal to MSG's), and the growths they refuse."""

from __future__ import annotations

import pytest
import torch

from flm import model as model_module
from flm.config import GrowthConfig, ModelConfig
from flm.errors import FlmError
from flm.growth import make_plan, parse_growth_spec
from flm.growth.baselines import grow_baseline, gstack, hyperclone, net2net, random_map
from flm.model import FLM

from ._util import TOL, generic_model, mup_tiny, tiny, tokens

CONFIGS = {
    "sp": tiny(xpos=False),
    "mup_xpos": mup_tiny(),
    # attention width apart from d_model (head_dim set), so width and heads grow by different factors
    "mup_decoupled": mup_tiny(head_dim=8, n_heads=3),
}


@torch.no_grad()
def logit_delta(cfg: ModelConfig, growth: GrowthConfig, seed: int = 0, **kw) -> tuple[float, float]:
    """(largest |Δlogit|, mean |Δlogit| / mean |logit|) between a perturbed model and its baseline growth."""
    model = generic_model(cfg, seed)
    x = tokens(cfg, seed=seed)
    ref = model(x)[..., : cfg.vocab_size]
    new_cfg, state = grow_baseline(cfg, model.state_dict(), growth, seed=seed) if not kw else hyperclone(
        cfg, model.state_dict(), growth, seed=seed, **kw)
    grown = FLM(new_cfg).eval()
    grown.load_state_dict(state, strict=True)
    out = grown(x)[..., : cfg.vocab_size]
    delta = (out - ref).abs()
    return float(delta.max()), float(delta.mean() / ref.abs().mean())


@pytest.mark.parametrize("cfg_name", CONFIGS)
@pytest.mark.parametrize("readout", ["keep", "mup"])
def test_hyperclone_keeps_the_logits(cfg_name: str, readout: str) -> None:
    """Hidden x2, heads x2 (x3 when decoupled), FFN x3 at once: the tied readout still gives the old logits,
    whichever readout multiplier the grown config has (μP's new-width one, or the old one kept)."""
    cfg = CONFIGS[cfg_name]
    growth = GrowthConfig(method="hyperclone", d_model=2 * cfg.d_model, n_heads=cfg.n_heads * (3 if cfg_name ==
                          "mup_decoupled" else 2), d_ff=3 * cfg.d_ff, readout=readout)
    assert logit_delta(cfg, growth)[0] <= TOL


def test_hyperclone_weights_are_repeated_and_divided() -> None:
    cfg = tiny()
    model = generic_model(cfg)
    new_cfg, state = hyperclone(cfg, model.state_dict(), GrowthConfig(method="hyperclone", d_model=64, d_ff=256))
    assert new_cfg.n_heads == 8 and new_cfg.head_dim == cfg.head_dim
    old = model.state_dict()
    assert torch.equal(state["blocks.0.mlp.up.weight"], old["blocks.0.mlp.up.weight"].repeat(2, 2) / 2)
    assert torch.equal(state["blocks.1.attn.o.weight"], old["blocks.1.attn.o.weight"].repeat(2, 2) / 2)
    assert torch.equal(state["tok_emb.weight"], old["tok_emb.weight"].repeat(1, 2))  # input copies, undivided
    assert torch.equal(state["ln_f.weight"], old["ln_f.weight"].repeat(2) / 2)  # the readout sums the copies


def test_hyperclone_noise_breaks_symmetry_and_keeps_the_function() -> None:
    cfg = mup_tiny()
    growth = GrowthConfig(method="hyperclone", d_model=96, d_ff=384)  # x3: one +N/-N pair, one clean copy
    model = generic_model(cfg)
    _, clean = hyperclone(cfg, model.state_dict(), growth)
    _, noisy = hyperclone(cfg, model.state_dict(), growth, snr_db=10.0, seed=1)
    w_clean, w_noisy = clean["blocks.0.attn.q.weight"], noisy["blocks.0.attn.q.weight"]
    d = cfg.d_model
    assert not torch.equal(w_clean, w_noisy)
    assert torch.allclose(w_noisy[:, :d] + w_noisy[:, d : 2 * d], w_clean[:, :d] + w_clean[:, d : 2 * d], atol=1e-6)
    assert torch.equal(w_noisy[:, 2 * d :], w_clean[:, 2 * d :])
    assert logit_delta(cfg, growth, snr_db=10.0)[0] <= 1e-4


@pytest.mark.parametrize("cfg_name", CONFIGS)
@pytest.mark.parametrize("growth", [
    GrowthConfig(method="net2net", d_ff=200),
    GrowthConfig(method="net2net", n_heads=7),
    GrowthConfig(method="net2net", n_layers=5, depth_position="interleave"),
    GrowthConfig(method="net2net", n_layers=4, depth_position=[0, 2], depth_init="random"),
    GrowthConfig(method="net2net", d_ff=300, n_heads=6, n_layers=3),
], ids=["ffn", "heads", "depth_interleave_copy", "depth_positions_random", "ffn_heads_depth"])
def test_net2net_is_exact_for_ffn_heads_and_depth(cfg_name: str, growth: GrowthConfig) -> None:
    assert logit_delta(CONFIGS[cfg_name], growth)[0] <= TOL


def test_net2net_new_blocks_are_the_identity_and_units_replicate() -> None:
    cfg = tiny()
    model = generic_model(cfg)
    growth = GrowthConfig(method="net2net", d_ff=200, n_layers=3)
    new_cfg, state = net2net(cfg, model.state_dict(), growth, seed=5)
    for key in ("attn.o.weight", "attn.o.bias", "mlp.down.weight", "mlp.down.bias"):
        assert not state[f"blocks.2.{key}"].any()  # the new block on top writes nothing into the residual
    assert torch.equal(state["blocks.2.attn.q.weight"], state["blocks.1.attn.q.weight"])  # a copy of the one below
    src = random_map(cfg, new_cfg, seed=5).index["f"]
    assert torch.equal(src[: cfg.d_ff], torch.arange(cfg.d_ff)) and int(src[cfg.d_ff :].max()) < cfg.d_ff
    up, down = state["blocks.0.mlp.up.weight"], state["blocks.0.mlp.down.weight"]
    assert torch.equal(up, model.state_dict()["blocks.0.mlp.up.weight"][src])
    # outgoing weights divided by the replication count: a unit's copies sum to the old column
    summed = torch.zeros(cfg.d_model, cfg.d_ff).index_add_(1, src, down)
    assert torch.allclose(summed, model.state_dict()["blocks.0.mlp.down.weight"], atol=1e-7)


@pytest.mark.parametrize("cfg_name", CONFIGS)
def test_net2net_hidden_width_is_exact_up_to_layernorm_statistics(cfg_name: str, monkeypatch) -> None:
    """Replicating hidden dims at random counts weights LayerNorm's mean and variance by the counts, so the
    function moves (on these perturbed random models about as much as G_stack's; on a trained model much less:
    docs/growth.md#baselines). With LayerNorm statistics weighted by 1/count it is exact: that is the only gap."""
    cfg = CONFIGS[cfg_name]
    growth = GrowthConfig(method="net2net", d_model=48, n_heads=cfg.n_heads)
    assert logit_delta(cfg, growth)[0] > 1e-3  # not exact ...
    weight = 1.0 / random_map(cfg, growth.apply(cfg), seed=0).counts("d")

    def weighted_layer_norm(x, w, b, eps, mask):
        if x.shape[-1] != weight.numel():  # the old model
            return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)
        mean = (x * weight).sum(-1, keepdim=True) / weight.sum()
        var = ((x - mean).square() * weight).sum(-1, keepdim=True) / weight.sum()
        return (x - mean) * torch.rsqrt(var + eps) * w + b

    monkeypatch.setattr(model_module, "masked_layer_norm", weighted_layer_norm)
    assert logit_delta(cfg, growth)[0] <= TOL  # ... and exact with count-weighted LayerNorm statistics


def test_gstack_repeats_the_whole_stack() -> None:
    cfg = tiny(n_layers=3)
    old = generic_model(cfg).state_dict()
    new_cfg, state = gstack(cfg, old, GrowthConfig(method="gstack", n_layers=9))
    assert new_cfg.n_layers == 9 and new_cfg.d_model == cfg.d_model
    for i in range(9):
        for key in ("ln1.weight", "attn.q.weight", "attn.o.bias", "mlp.down.weight"):
            assert torch.equal(state[f"blocks.{i}.{key}"], old[f"blocks.{i % 3}.{key}"])
    for key in ("tok_emb.weight", "ln_f.weight", "ln_f.bias"):
        assert torch.equal(state[key], old[key])
    assert state["blocks.3.attn.q.weight"].data_ptr() != state["blocks.0.attn.q.weight"].data_ptr()  # copies
    model = FLM(new_cfg)
    model.load_state_dict(state, strict=True)


@pytest.mark.parametrize(("growth", "message"), [
    (GrowthConfig(method="gstack", n_layers=5), "multiple of 2"),
    (GrowthConfig(method="gstack", n_layers=4, d_model=64), "stacks layers only"),
    (GrowthConfig(method="hyperclone", d_model=48), "multiple of the current 32"),
    (GrowthConfig(method="hyperclone", d_ff=200), "multiple of the current 128"),
    (GrowthConfig(method="hyperclone", d_model=64, n_layers=4), "width only"),
])
def test_unreachable_shapes_are_refused(growth: GrowthConfig, message: str) -> None:
    cfg = tiny()
    with pytest.raises(FlmError, match=message) as err:
        grow_baseline(cfg, generic_model(cfg).state_dict(), growth)
    assert "\n" not in str(err.value)


def test_net2net_refuses_to_renumber_blocks_under_inverse_layer_scaling() -> None:
    """Without masks nothing could ramp a moved block's 1/(layer + 1) factor: one line, pointing at 'top'."""
    cfg = tiny(scale_attn_by_inverse_layer_idx=True)
    state = generic_model(cfg).state_dict()
    with pytest.raises(FlmError, match="set depth_position = 'top', or use method 'msg'") as err:
        grow_baseline(cfg, state, GrowthConfig(method="net2net", n_layers=4, depth_position="interleave"))
    assert "\n" not in str(err.value)
    grow_baseline(cfg, state, GrowthConfig(method="net2net", n_layers=4))  # on top: no block moves


def test_method_msg_is_not_a_baseline() -> None:
    cfg = tiny()
    with pytest.raises(FlmError, match="MSG"):
        grow_baseline(cfg, generic_model(cfg).state_dict(), GrowthConfig(d_ff=256))


@pytest.mark.parametrize("spec", [
    "method=gstack,n_layers=4",
    "method=hyperclone,d_model=64,d_ff=256",
    "method=net2net,d_model=48,d_ff=200,n_layers=3,depth_position=interleave",
])
def test_shapes_equal_msgs_for_the_same_target(spec: str) -> None:
    cfg = mup_tiny()
    growth = parse_growth_spec(spec)
    new_cfg, state = grow_baseline(cfg, generic_model(cfg).state_dict(), growth)
    msg = make_plan(cfg, growth.model_copy(update={"method": "msg"}))
    assert new_cfg == msg.new
    assert {k: tuple(v.shape) for k, v in state.items()} == {tp.name: tp.shape for tp in msg.tensors}
