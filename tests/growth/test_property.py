"""Property: any growth spec on any small model preserves the function (|Δlogit| <= 1e-5 at m = 0)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flm.config import GrowthConfig, ModelConfig

from ._util import TOL, max_delta


@st.composite
def model_and_growth(draw) -> tuple[ModelConfig, GrowthConfig]:
    # d_model >= 8: a LayerNorm over 2-4 dims is ill-conditioned (1/sqrt(var + eps) can reach ~300), so
    # rounding-level differences between equal computations would be amplified past 1e-5 there
    head_dim = draw(st.sampled_from([4, 8]))
    n_heads = draw(st.integers(8 // head_dim, 3))
    standard = draw(st.booleans())  # attention width == d_model, or set apart by head_dim
    d_model = n_heads * head_dim if standard else draw(st.integers(8, 24))
    standard = d_model == n_heads * head_dim
    mup = draw(st.booleans())
    cfg = ModelConfig(
        vocab_size=draw(st.integers(50, 200)),
        d_model=d_model,
        n_heads=n_heads,
        head_dim=head_dim,
        d_ff=draw(st.integers(4, 48)),
        n_layers=draw(st.integers(1, 3)),
        max_seq_len=32,
        xpos=draw(st.booleans()),
        xpos_scale_base=16.0,
        mup_base_width=8 if mup else None,
        output_mult=draw(st.sampled_from([1.0, 2.0])),
        input_mult=draw(st.sampled_from([1.0, 3.0])),
        scale_attn_by_inverse_layer_idx=draw(st.booleans()),  # the release's option: moved blocks keep factors
    )
    spec: dict = {}
    if draw(st.booleans()):
        spec["n_heads"] = n_heads + draw(st.integers(0, 2))
    if draw(st.booleans()):
        step = head_dim if standard and "n_heads" not in spec else 1
        spec["d_model"] = d_model + step * draw(st.integers(0, 3))
    if draw(st.booleans()):
        spec["d_ff"] = cfg.d_ff + draw(st.integers(0, 20))
    if draw(st.booleans()):
        extra = draw(st.integers(0, 3))
        spec["n_layers"] = cfg.n_layers + extra
        where = draw(st.sampled_from(["top", "interleave", "positions"]))
        if where == "positions":
            spec["depth_position"] = sorted(
                draw(
                    st.lists(
                        st.integers(0, spec["n_layers"] - 1), min_size=extra, max_size=extra, unique=True
                    )
                )
            )
        else:
            spec["depth_position"] = where
        spec["depth_init"] = draw(st.sampled_from(["copy", "random"]))
    return cfg, GrowthConfig(**spec)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_and_growth(), st.integers(0, 1000))
def test_any_growth_preserves_the_function(case: tuple[ModelConfig, GrowthConfig], seed: int) -> None:
    cfg, growth = case
    assert max_delta(cfg, growth, seed=seed) <= TOL
