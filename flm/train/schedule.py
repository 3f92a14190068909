"""Learning-rate schedules: linear warmup, then cosine down to a floor (GPT-3 / FLM-101B)."""

from __future__ import annotations

import math
from dataclasses import dataclass


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
