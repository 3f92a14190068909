"""The compute-matched arms of benchmarks/growth_speedup.py (issue 24).

- ``scratch-0.125x``, ``scratch-0.25x``, ``scratch-0.5x``, ``scratch-1x``: from-scratch models at the final depth
  and the whole-head widths (FFN at its ratio) whose non-embedding parameters are nearest an eighth, a quarter,
  half and all of the final shape's (the demo: 0.112, 0.251, 0.446, 1), each trained for the progressive
  plan's FLOPs with the plan's peak LR and warmup and a cosine over its own steps. "Best scratch" is the
  lowest final validation loss among them: what a user with the plan's compute could have had without growth.
- ``planned``: MSG with the schedule of `flm plan grow CONFIG --budget <the plan's FLOPs> --fit FIT`, the loss
  model fitted (`flm plan fit`'s Approach 3) on the first seed's from-scratch runs: the same-tokens scratch
  arm and the 0.25x, 0.5x and 1x arms (FIT_SIZES; the 0.125x arm was added after the first run, when 0.25x
  came out best), with the loss bumps of the first seed's msg arm per growth kind. It starts at the plan's
  first shape, as the msg arm (`flm plan grow --keep-start`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from flm.config import ModelConfig, RunConfig, config_from_dict, config_to_dict
from flm.flops import flops_per_token
from flm.growth.bump import EVENT
from flm.scaling.grow_planner import growth_kinds, plan_config, plan_growth
from flm.scaling.loss_model import LossModel, fit_loss_model, points_from_runs, save_fit
from flm.scaling.predict import n_params
from flm.stages import resolve_stages
from flm.train.run import scratch_config

SIZES = {"scratch-0.125x": 0.125, "scratch-0.25x": 0.25, "scratch-0.5x": 0.5, "scratch-1x": 1.0}
FIT_SIZES = ("scratch-0.25x", "scratch-0.5x", "scratch-1x")  # the planner's fit: these and the same-tokens scratch
PLANNED = "planned"
COUNT = "non-embedding"  # the loss model's N, as flm plan fit's default


def narrower(final: ModelConfig, fraction: float) -> ModelConfig:
    """The final shape's depth at the width (whole heads of its head_dim, FFN at its ratio) whose non-embedding
    parameter count is nearest ``fraction`` of the final one's (in log)."""
    if fraction == 1.0:
        return final
    hd = final.head_dim or final.d_model // final.n_heads
    target = fraction * n_params(final, COUNT)
    best: tuple[float, ModelConfig] | None = None
    for heads in range(1, final.n_heads + 1):
        d = heads * hd
        m = final.model_copy(update={"d_model": d, "n_heads": heads, "d_ff": d * final.d_ff // final.d_model})
        m = ModelConfig.model_validate(m.model_dump())
        gap = abs(math.log(n_params(m, COUNT) / target))
        if best is None or gap < best[0]:
            best = (gap, m)
    assert best is not None
    return best[1]


def sized_scratch(plan: RunConfig, arm: str, budget: float) -> RunConfig:
    """From scratch at ``SIZES[arm]`` of the final shape's parameters, for ``budget`` FLOPs."""
    base = scratch_config(plan, "flops")  # the final shape with the plan's peak LR and warmup
    model = narrower(base.model, SIZES[arm])
    data = config_to_dict(base)
    data["model"] = config_to_dict(model)
    per_step = base.train.batch_size * base.seq_len * flops_per_token(model, base.seq_len)
    data["train"]["steps"] = max(1, round(budget / per_step))
    return config_from_dict(data, where=f"arm {arm}")


def measured_bumps(rows: list[dict], plan: RunConfig) -> dict[str, float]:
    """The validation-loss bump of each growth of a progressive run, shared equally among the growth's kinds
    (width, ffn, heads, depth), averaged over growths of the same kind; a fall counts as 0."""
    stages = resolve_stages(plan)
    per_kind: dict[str, list[float]] = defaultdict(list)
    for b in (r for r in rows if r.get("event") == EVENT):
        i = b["stage"] - 1  # stages count from 1
        kinds = growth_kinds(stages[i - 1].model, stages[i].model)
        for k in kinds:
            per_kind[k].append(max(b["val_loss_bump"], 0.0) / len(kinds))
    return {k: sum(v) / len(v) for k, v in per_kind.items()}


def fit_law(run_dirs: list[Path], bumps: dict[str, float], out: Path) -> LossModel:
    """`flm plan fit` on the from-scratch runs, with the measured bumps; the fit file is written to ``out``."""
    n, d, loss, runs = points_from_runs(run_dirs, "val_loss", COUNT)
    law = fit_loss_model(n, d, loss, runs=runs, bootstrap=20, count=COUNT)
    law.bumps = bumps
    save_fit(law, out)
    return law


def planned(plan: RunConfig, law: LossModel, budget: float, stages: int) -> tuple[RunConfig, dict[str, Any]]:
    """The `flm plan grow` schedule of ``plan``'s start and final shapes for ``budget``, and what it predicts."""
    final = resolve_stages(plan)[-1].model
    gp = plan_growth(law, plan, final, budget, stages, smaller_starts=False)  # the plan's start, as the msg arm
    cfg = plan_config(plan, gp)
    last = gp.segments[-1]
    std = law.loss_std(last.shape.n, last.d_end)  # the fit's bootstrap spread at the end (None without)
    info = {"predicted_final_loss": gp.final_loss, "predicted_std": std, "budget": budget,
            "stages": [{"shape": st.model.shape(), "steps": st.steps} for st in resolve_stages(cfg)],
            "law": law.to_json()}
    return cfg, info


def same_stages(a: RunConfig, b: RunConfig) -> bool:
    """Whether two plans train the same shapes for the same steps (a reused planned run is the plan's)."""
    def shape(c: RunConfig) -> list[tuple]:
        return [(tuple(s.model.shape().values()), s.steps) for s in resolve_stages(c)]
    return shape(a) == shape(b)


def best_scratch(per_arm: dict[str, list[dict]], seed: int) -> tuple[str, list[dict]]:
    """The compute-matched scratch arm with the lowest final validation loss at ``seed``, and its rows."""
    finals = {a: [r["val_loss"] for r in runs[seed] if "val_loss" in r][-1] for a, runs in per_arm.items()
              if a in SIZES}
    arm = min(finals, key=finals.__getitem__)
    return arm, per_arm[arm][seed]


def envelope(curves: list[list[dict]], points: int = 200) -> tuple[list[float], list[float]]:
    """The lowest validation loss any of ``curves`` had reached by each FLOPs (the best-scratch envelope), up to
    the FLOPs every curve reached (the compute arms all end at the plan's FLOPs, give or take a step)."""
    import numpy as np

    vals = [[(r["flops"], r["val_loss"]) for r in rows if "val_loss" in r and r["flops"] > 0] for rows in curves]
    lo, hi = min(v[0][0] for v in vals), min(v[-1][0] for v in vals)
    grid = np.geomspace(lo, hi, points)
    best = np.full(points, np.inf)
    for v in vals:
        x, y = np.array([p[0] for p in v]), np.minimum.accumulate(np.array([p[1] for p in v]))
        inside = (grid >= x[0]) & (grid <= x[-1])
        best[inside] = np.minimum(best[inside], np.interp(grid[inside], x, y))
    return grid.tolist(), best.tolist()
