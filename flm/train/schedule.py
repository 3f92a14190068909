"""Learning-rate schedules: linear warmup, then cosine down to a floor (GPT-3 / FLM-101B), and each stage's
share of a progressive run's schedule (``lr_mode``: one cosine across the stages, or one per stage)."""

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
    """One stage's share of a progressive run's schedule.

    ``base`` gives the LR at the stage's local step. With ``start_lr`` the curve is rescaled so it starts
    there and keeps the same shape down to the floor (the paper's "approximately inherit the previous
    learning rate and adhere to the same schedule"). ``rewarmup`` ramps linearly over the first steps.
    """

    base: CosineSchedule
    start_lr: float | None = None
    rewarmup: int = 0

    def __call__(self, step: int) -> float:
        lr = self.base(step)
        if self.start_lr is not None:
            first, floor = self.base(0), self.base.floor
            lr = floor + (self.start_lr - floor) * (lr - floor) / max(first - floor, 1e-30)
        if step < self.rewarmup:
            lr *= (step + 1) / self.rewarmup
        return lr


def stage_schedules(cfg: RunConfig, stages: Sequence[Stage]) -> list[StageSchedule]:
    """The schedule of every stage of ``cfg`` (``flm.stages.resolve_stages``), by local step.

    inherit: one cosine over the whole plan, peaking at the first stage's LR after its warmup; a later
    stage's ``lr`` rescales its share to start there and its ``warmup_steps`` re-warm it. restart: each
    stage warms up to its own LR and decays over its own steps.
    """
    oc = cfg.optim
    first = stages[0]
    total = sum(s.steps for s in stages)
    out: list[StageSchedule] = []
    start = 0
    for s in stages:
        if cfg.lr_mode == "inherit":
            warmup = oc.warmup_steps if first.warmup_steps is None else first.warmup_steps
            base = CosineSchedule(first.lr or oc.lr, oc.min_lr, warmup, total, offset=start)
            out.append(StageSchedule(base) if s is first else StageSchedule(base, s.lr, s.warmup_steps or 0))
        else:
            warmup = oc.warmup_steps if s.warmup_steps is None else s.warmup_steps
            out.append(StageSchedule(CosineSchedule(s.lr or oc.lr, oc.min_lr, warmup, s.steps)))
        start += s.steps
    return out
