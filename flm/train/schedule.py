"""Learning-rate schedules: linear warmup, then cosine down to a floor (GPT-3 / FLM-101B), and each stage's
share of a progressive run's schedule (``lr_mode``: one schedule across the stages, or one per stage).

Under ``lr_mode = "inherit"`` the stages share one warmup + cosine over the whole plan: a stage's first LR is
the one the previous stage's schedule would give next (FLM-101B: "we approximately inherit the previous
learning rate and adhere to the same schedule"). A stage changes it only when it asks: ``stages[i].lr_scale``
multiplies the LR from that stage on (later stages inherit the scaled LR), reached at once or, with
``stages[i].warmup_steps``, by a linear move from the inherited LR. This is the *base* LR: under μP every
parameter group multiplies it by its own width-dependent factor (flm.mup), so after a width growth the
hidden matrices' LRs drop by old/new fan-in while the base LR is continuous.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from flm.config import RunConfig
from flm.stages import Stage


@dataclass(frozen=True)
class CosineSchedule:
    """LR at optimizer step ``step`` (0-based): warmup from peak/warmup to peak, cosine to ``floor`` at
    ``total``, flat after. ``offset`` shifts a stage's local steps onto a schedule shared across stages."""

    peak: float
    floor: float
    warmup: int
    total: int
    offset: int = 0

    def __call__(self, step: int) -> float:
        s = step + self.offset
        if s < self.warmup:
            return self.peak * (s + 1) / self.warmup
        progress = min(1.0, (s - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + 0.5 * (self.peak - self.floor) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class StageSchedule:
    """One stage's share of a progressive run's schedule: ``base`` (the plan's curve at the stage's local
    step) times ``inherited`` (the product of the earlier stages' ``lr_scale``), times a factor that goes
    linearly from 1 at the stage's first step to ``scale`` after ``rewarmup`` steps (at once without one).
    So the first step continues the previous stage exactly unless ``scale`` != 1 and ``rewarmup`` == 0."""

    base: CosineSchedule
    inherited: float = 1.0
    scale: float = 1.0
    rewarmup: int = 0

    def __call__(self, step: int) -> float:
        factor = self.scale
        if step < self.rewarmup:
            factor = 1.0 + (self.scale - 1.0) * step / self.rewarmup
        return self.base(step) * self.inherited * factor


def stage_schedules(cfg: RunConfig, stages: Sequence[Stage]) -> list[StageSchedule]:
    """The schedule of every stage of ``cfg`` (``flm.stages.resolve_stages``), by local step.

    inherit: one cosine over the whole plan, peaking at the first stage's LR after its warmup; a later
    stage continues it, times its ``lr_scale`` (re-warmed from the inherited LR over its ``warmup_steps``).
    restart: each stage warms up to its own LR and decays over its own steps.
    """
    oc = cfg.optim
    first = stages[0]
    total = sum(s.steps for s in stages)
    out: list[StageSchedule] = []
    start, inherited = 0, 1.0
    for s in stages:
        if cfg.lr_mode == "inherit":
            warmup = oc.warmup_steps if first.warmup_steps is None else first.warmup_steps
            base = CosineSchedule(first.lr or oc.lr, oc.min_lr, warmup, total, offset=start)
            if s is first:
                out.append(StageSchedule(base))
            else:
                scale = s.lr_scale if s.lr_scale is not None else 1.0
                out.append(StageSchedule(base, inherited, scale, s.warmup_steps or 0))
                inherited *= scale
        else:
            warmup = oc.warmup_steps if s.warmup_steps is None else s.warmup_steps
            out.append(StageSchedule(CosineSchedule(s.lr or oc.lr, oc.min_lr, warmup, s.steps)))
        start += s.steps
    return out
