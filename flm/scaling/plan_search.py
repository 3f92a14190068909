"""Growth-plan search on a small proxy (``flm plan search``): under one fixed FLOP budget, which schedule of
a progressive run reaches the lowest validation loss?

A candidate keeps the plan's shapes (its stages' growth specs) and changes how it gets there: the share of
the budget the first (smallest) stage spends, the length of each growth's mask ramp (as a share of its
stage), the LR scale at each growth (``stages[i].lr_scale`` under ``lr_mode = "inherit"``), and the order of
the growths (which dimensions grow first; only when the specs set disjoint keys, so the final shape stays).
Steps per stage follow from the budget: the later stages split what the first leaves in proportion to their
FLOPs in the given plan, and each stage's steps are its FLOPs / (FLOPs per token x tokens per step).

Each candidate is one ``flm run`` (``run_plan``) into its own folder, so an interrupted search resumes where
it stopped and finished candidates are read, not retrained. The config as given is always candidate 0.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flm.config import RunConfig, config_from_dict, config_to_dict, save_config
from flm.errors import FlmError
from flm.flops import flops_per_token
from flm.io import atomic_write
from flm.stages import resolve_stages, stage_models
from flm.train.run import run_plan, stage_summaries

FIRST_SHARES = (0.5, 0.6, 0.7, 0.8, 0.9)
RAMP_SHARES = (0.1, 0.25, 0.4)
LR_SCALES = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class PlanChoice:
    first_share: float | None  # share of the budget in the first stage; None: as the config gives it
    ramp_share: float | None  # each ramp / its stage's steps; None: as given
    lr_scale: float  # stages[i].lr_scale at every growth (1: the inherited LR continues)
    order: tuple[int, ...]  # growth i of the candidate is growth order[i] of the config

    @property
    def tag(self) -> str:
        """A folder name for this candidate's run."""
        if self.first_share is None:
            return "as-given"
        order = "".join(str(i) for i in self.order)
        return f"first{self.first_share:g}_ramp{self.ramp_share:g}_lr{self.lr_scale:g}_order{order}"


@dataclass
class Trial:
    choice: PlanChoice
    steps: list[int]
    flops: float
    val_loss: float | None = None  # None: not run yet; inf: diverged

    def to_json(self) -> dict[str, Any]:
        return {"tag": self.choice.tag, **asdict(self.choice), "steps": self.steps, "flops": self.flops,
                "val_loss": self.val_loss}


def plan_flops(cfg: RunConfig) -> float:
    """Model FLOPs of the whole plan (tokens x FLOPs per token, per stage)."""
    seq = cfg.seq_len
    return sum(s.steps * s.batch_size * seq * flops_per_token(s.model, seq) for s in resolve_stages(cfg))


def _orders(cfg: RunConfig) -> list[tuple[int, ...]]:
    """Orders of the growths that keep the final shape: every permutation when their specs set disjoint
    shape keys, else only the given order."""
    specs = [set(config_to_dict(st.grow)) - {"ramp_steps", "depth_position", "depth_init", "depth_copy_from",
                                             "reset_optimizer", "method"} for st in cfg.stages[1:] if st.grow]
    n = len(specs)
    disjoint = all(not (a & b) for a, b in itertools.combinations(specs, 2))
    return list(itertools.permutations(range(n))) if disjoint and n > 1 else [tuple(range(n))]


def choices(cfg: RunConfig, trials: int, seed: int = 0) -> list[PlanChoice]:
    """The config as given, then ``trials - 1`` distinct candidates drawn (seeded) from the grid."""
    if trials < 1:
        raise FlmError(f"--trials {trials}: search at least one candidate")
    if len(cfg.stages) < 2:
        raise FlmError("flm plan search needs a plan with [[stages]] and at least one growth; the config has none")
    scales = LR_SCALES if cfg.lr_mode == "inherit" else (1.0,)
    grid = [PlanChoice(f, r, s, o) for f in FIRST_SHARES for r in RAMP_SHARES for s in scales for o in _orders(cfg)]
    random.Random(seed).shuffle(grid)
    return [PlanChoice(None, None, 1.0, tuple(range(len(cfg.stages) - 1)))] + grid[: trials - 1]


def candidate_config(cfg: RunConfig, choice: PlanChoice, budget: float) -> RunConfig:
    """``cfg`` with the plan of ``choice``, its stages' steps set so the plan's FLOPs are about ``budget``."""
    data = config_to_dict(cfg)
    stages = data["stages"]
    growths = [st.get("grow") for st in stages[1:]]
    for i, j in enumerate(choice.order):
        stages[i + 1]["grow"] = dict(growths[j])
    data["name"] = f"{cfg.name}-{choice.tag}"
    if choice.first_share is None:
        return _scaled(config_from_dict(data, where=f"candidate {choice.tag}"), budget)
    models = stage_models(config_from_dict(data, where=f"candidate {choice.tag}"))  # the reordered shapes
    given = resolve_stages(cfg)
    seq = cfg.seq_len
    per_step = [s.batch_size * seq * flops_per_token(m, seq) for s, m in zip(given, models)]
    later = [s.steps * s.batch_size * seq * flops_per_token(s.model, seq) for s in given[1:]]
    shares = [choice.first_share] + [(1 - choice.first_share) * f / sum(later) for f in later]
    for st, share, f in zip(stages, shares, per_step):
        st.pop("tokens", None)
        st["steps"] = max(1, round(share * budget / f))
        if st.get("grow") is not None:
            st["grow"]["ramp_steps"] = max(1, round(choice.ramp_share * st["steps"]))
            if choice.lr_scale != 1.0:
                st["lr_scale"] = choice.lr_scale
    return config_from_dict(data, where=f"candidate {choice.tag}")


def _scaled(cfg: RunConfig, budget: float) -> RunConfig:
    """The plan as given, every stage's steps (and ramps) scaled by the same factor to meet ``budget``."""
    factor = budget / plan_flops(cfg)
    if abs(factor - 1) < 1e-9:
        return cfg
    data = config_to_dict(cfg)
    for st, s in zip(data["stages"], resolve_stages(cfg)):
        st.pop("tokens", None)
        st["steps"] = max(1, round(s.steps * factor))
        if st.get("grow") is not None:
            st["grow"]["ramp_steps"] = max(1, round(st["grow"]["ramp_steps"] * factor))
    return config_from_dict(data, where="the plan as given, scaled to the budget")


def final_val_loss(run_dir: Path) -> float | None:
    sums = stage_summaries(run_dir)
    if not sums or sums[-1]["val_end"] is None:
        return None
    v = float(sums[-1]["val_end"])
    return v if math.isfinite(v) else math.inf


def run_search(cfg: RunConfig, out_dir: Path, trials: int, budget: float | None = None, seed: int = 0,
               on_trial: Callable[[Trial], None] | None = None) -> list[Trial]:
    """Train every candidate (resuming unfinished ones) into out_dir/trials/<tag>; the results, best first
    once all are known, also go to out_dir/search.jsonl."""
    budget = budget or plan_flops(cfg)
    results: list[Trial] = []
    for choice in choices(cfg, trials, seed):
        try:
            cand = candidate_config(cfg, choice, budget)
        except FlmError:  # e.g. a ramp longer than a very short stage: not a plan that can run
            continue
        trial = Trial(choice, [s.steps for s in resolve_stages(cand)], plan_flops(cand))
        run_dir = out_dir / "trials" / choice.tag
        trial.val_loss = final_val_loss(run_dir) if (run_dir / "report.md").is_file() else None
        if trial.val_loss is None:
            try:
                run_plan(cand, run_dir, resume=(run_dir / "config.toml").is_file())
            except FlmError as e:
                if "loss became" not in str(e):  # the trainer's divergence error; anything else is the user's
                    raise
            trial.val_loss = final_val_loss(run_dir)
            trial.val_loss = math.inf if trial.val_loss is None else trial.val_loss
        results.append(trial)
        if on_trial is not None:
            on_trial(trial)
    ranked = sorted(results, key=lambda t: t.val_loss if t.val_loss is not None else math.inf)
    atomic_write(out_dir / "search.jsonl", "".join(json.dumps(t.to_json()) + "\n" for t in ranked))
    return ranked


def save_best(cfg: RunConfig, best: Trial, budget: float, path: Path) -> RunConfig:
    """The winning plan as a config file ``path``."""
    plan = candidate_config(cfg, best.choice, budget)
    data = config_to_dict(plan)
    data["name"] = cfg.name
    out = config_from_dict(data, where="best plan")
    save_config(out, path)
    return out
