"""The growth planner on a synthetic loss model: it grows exactly where the marginal rates cross, which a
brute-force scan of growth points confirms is the lowest final loss; the best from-scratch model is the
analytic compute-optimal one; the plan becomes a config that flm runs; bad shapes and budgets are one line."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flm.config import ModelConfig, config_from_dict, load_config, save_config
from flm.errors import FlmError
from flm.flops import flops_per_token
from flm.scaling.grow_planner import (
    Shape,
    best_scratch,
    candidate_chains,
    chain_shapes,
    grow,
    growth_lrs,
    growth_spec,
    parse_shape,
    plan_config,
    plan_growth,
    rate,
    simulate,
    start_shapes,
    tokens_after_growth,
)
from flm.scaling.loss_model import LossModel
from flm.stages import resolve_stages
from tests.conftest import tiny_config_dict

LAW = LossModel(E=1.8, A=300.0, B=900.0, alpha=0.35, beta=0.3)
TINY = LossModel(E=2.0, A=200.0, B=40.0, alpha=0.4, beta=0.3)  # whose rates cross within a tiny model's budget
# size matters little and each growth costs a bump: a smaller start that grows once pays
CHEAP = LossModel(E=2.0, A=20.0, B=40.0, alpha=0.4, beta=0.3, bumps={"width": 0.2, "depth": 0.2})


def _final_loss(law: LossModel, small: Shape, big: Shape, grow_at: float, budget: float) -> float:
    """Brute force: train ``small`` for ``grow_at`` FLOPs, grow, train ``big`` for the rest."""
    loss = float(law(small.n, grow_at / small.cost))
    d = tokens_after_growth(law, loss, big)
    return float(law(big.n, d + (budget - grow_at) / big.cost))


@pytest.mark.parametrize("bump", [0.0, 0.05])
def test_grows_where_the_rates_cross_and_that_is_the_best_point(bump) -> None:
    small, big = Shape(1e6, 6e6), Shape(4e6, 24e6, bump=bump)
    budget = 1e18
    segs = simulate(LAW, [small, big], budget)
    assert len(segs) == 2 and segs[1].flops_end == pytest.approx(budget)
    at = segs[0].flops_end
    assert rate(LAW, small, segs[0].d_end) == pytest.approx(rate(LAW, big, segs[1].d_start), rel=1e-9)
    assert segs[1].loss_start == pytest.approx(segs[0].loss_end + bump, rel=1e-12)
    grid = np.geomspace(at / 30, min(at * 30, budget * 0.999), 4001)  # spacing 0.17%
    scan = [_final_loss(LAW, small, big, g, budget) for g in grid]
    best = grid[int(np.argmin(scan))]
    assert best == pytest.approx(at, rel=0.004)
    assert segs[1].loss_end == pytest.approx(min(scan), abs=1e-9)
    assert segs[1].loss_end <= min(scan) + 1e-12


def test_budget_ending_before_the_crossing_keeps_the_small_shape() -> None:
    small, big = Shape(1e6, 6e6), Shape(4e6, 24e6)
    at = simulate(LAW, [small, big], 1e18)[0].flops_end
    segs = simulate(LAW, [small, big], at / 2)
    assert len(segs) == 1 and segs[0].flops_end == pytest.approx(at / 2)


def test_three_stages_grow_at_each_crossing() -> None:
    shapes = [Shape(1e6, 6e6), Shape(3e6, 18e6, bump=0.01), Shape(9e6, 54e6, bump=0.02)]
    segs = simulate(LAW, shapes, 1e19)
    assert len(segs) == 3
    for a, b in zip(segs, segs[1:]):
        assert rate(LAW, a.shape, a.d_end) == pytest.approx(rate(LAW, b.shape, b.d_start), rel=1e-9)
        assert b.flops_start == pytest.approx(a.flops_end)


def test_best_scratch_is_the_analytic_compute_optimum() -> None:
    budget = 1e20
    n, d, loss = best_scratch(LAW, budget, lambda x: 6 * x, 1e4, 1e12)
    a, b = LAW.alpha, LAW.beta
    g = (a * LAW.A / (b * LAW.B)) ** (1 / (a + b))  # Hoffmann et al. 2022, eq. 4
    n_opt = g * (budget / 6) ** (b / (a + b))
    assert n == pytest.approx(n_opt, rel=1e-3) and d == pytest.approx(budget / (6 * n_opt), rel=1e-3)
    assert loss == pytest.approx(float(LAW(n_opt, budget / (6 * n_opt))), rel=1e-9)


@pytest.fixture
def cfg(tiny_corpus, prepared_dir):
    data = tiny_config_dict(tiny_corpus, prepared_dir)
    data["optim"] = {"warmup_steps": 2}
    return config_from_dict(data)


def test_plan_on_flm_shapes_writes_a_config_flm_runs(cfg, tmp_path) -> None:
    final = parse_shape("d_model=64,d_ff=256,n_layers=4", cfg.model)
    assert final.n_heads == 4 and final.d_ff == 256
    chains = candidate_chains(cfg.model, final, 3)
    assert [cfg.model, final] in chains and all(len(c) <= 3 for c in chains)
    assert {c[1].d_model for c in chains if len(c) == 3} == {32, 48, 64}  # width: start, middle, final
    per_step = cfg.train.batch_size * cfg.seq_len
    budget = 400 * per_step * flops_per_token(final, cfg.seq_len)
    plan = plan_growth(TINY, cfg, final, budget, 3)
    assert plan.chain[0] == cfg.model, "no smaller start is predicted better under this law: the given one stays"
    assert plan.final_loss == plan_growth(TINY, cfg, final, budget, 3, smaller_starts=False).final_loss
    assert plan.reaches_final and plan.segments[-1].flops_end == pytest.approx(budget)
    others = [simulate(TINY, chain_shapes(TINY, c, cfg.seq_len), budget)[-1].loss_end for c in chains]
    assert plan.final_loss == pytest.approx(min(others)) and len(plan.chain) == 3  # an intermediate shape pays
    assert max(others) > plan.final_loss
    out = plan_config(cfg, plan)
    save_config(out, tmp_path / "plan.toml")
    stages = resolve_stages(load_config(tmp_path / "plan.toml"))
    assert stages[-1].model.shape() == final.shape() and stages[0].growth is None
    spent = sum(s.steps * per_step * flops_per_token(s.model, cfg.seq_len) for s in stages)
    assert spent == pytest.approx(budget, rel=0.02)  # whole steps
    assert all(1 <= s.growth.ramp_steps <= s.steps for s in stages[1:])
    lrs = growth_lrs(out)
    assert len(lrs) == len(stages) and all(0 < lr <= cfg.optim.lr for lr in lrs)


@pytest.mark.parametrize("text, words", [
    ("d_model=16", "smaller than the current 32"),
    ("d_model=40", "not a multiple of head_dim 16"),
    ("d_model=32", "nothing to grow"),
    ("width=64", "is not KEY=INT"),
    ("n_layers=x", "is not KEY=INT"),
])
def test_unreachable_final_shape_is_one_line(cfg, text, words) -> None:
    with pytest.raises(FlmError, match=words) as e:
        parse_shape(text, cfg.model)
    assert "\n" not in str(e.value)


def test_budget_below_one_step_is_one_line(cfg) -> None:
    final = parse_shape("d_model=64", cfg.model)
    with pytest.raises(FlmError, match="below one step") as e:
        plan_growth(LAW, cfg, final, 1e3, 3)
    assert "\n" not in str(e.value) and not math.isnan(1e3)


def test_smaller_starts_grow_back_into_the_given_one(cfg) -> None:
    shapes = start_shapes(cfg.model)
    assert shapes[0] == cfg.model
    assert [(m.d_model, m.n_layers, m.n_heads, m.d_ff) for m in shapes[1:]] == [(32, 1, 2, 128), (16, 2, 1, 64),
                                                                                (16, 1, 1, 64)]
    for small in shapes[1:]:
        assert small.head_dim == cfg.model.head_dim
        assert grow(small, growth_spec(small, cfg.model), "back") == cfg.model
    mup = ModelConfig(d_model=96, n_heads=3, n_layers=1, mup_base_width=32, output_mult=2.0)
    shapes = start_shapes(mup)
    assert [(m.d_model, m.n_layers) for m in shapes] == [(96, 1), (64, 1), (32, 1)]  # heads rounded down; 1 layer
    assert shapes[2].output_mult == pytest.approx(2.0 / 3)  # readout "keep" scales it back up with the width
    assert grow(shapes[2], growth_spec(shapes[2], mup), "back").output_mult == pytest.approx(2.0)


def test_the_planner_starts_smaller_where_the_law_makes_it_pay(cfg, tmp_path) -> None:
    final = parse_shape("d_model=64,d_ff=256,n_layers=4", cfg.model)
    per_step = cfg.train.batch_size * cfg.seq_len
    budget = 4000 * per_step * flops_per_token(final, cfg.seq_len)
    plan = plan_growth(CHEAP, cfg, final, budget, 3)
    given = plan_growth(CHEAP, cfg, final, budget, 3, smaller_starts=False)
    assert plan.chain[0] in start_shapes(cfg.model)[1:] and plan.final_loss < given.final_loss
    assert plan.reaches_final and given.reaches_final
    assert given.chain[0] == cfg.model
    every = [simulate(CHEAP, chain_shapes(CHEAP, c, cfg.seq_len), budget)[-1].loss_end
             for s in start_shapes(cfg.model)
             for c in candidate_chains(s, final, 3, [cfg.model] if s is not cfg.model else [])]
    assert plan.final_loss == pytest.approx(min(every))
    save_config(plan_config(cfg, plan), tmp_path / "plan.toml")
    stages = resolve_stages(load_config(tmp_path / "plan.toml"))
    assert stages[0].model.shape() == plan.chain[0].shape() and stages[-1].model.shape() == final.shape()
    spent = sum(s.steps * per_step * flops_per_token(s.model, cfg.seq_len) for s in stages)
    assert spent == pytest.approx(budget, rel=0.02)  # whole steps
