"""Learning-rate schedules: linear warmup, then cosine down to a floor (GPT-3 / FLM-101B), and each stage's
share of a progressive run's schedule (``lr_mode``: one schedule across the stages, or one per stage).

Under ``lr_mode = "inherit"`` the stages share one warmup + cosine: a stage's first LR is the one the
previous stage's schedule would give next (FLM-101B: "we approximately inherit the previous learning rate
and adhere to the same schedule"). The cosine reaches ``optim.min_lr`` at ``optim.decay_steps`` (default:
the plan's last step); a horizon longer than the plan ends the run above the floor, which is what
FLM-101B's Table 1 implies (a cosine of 4e-4 -> 6e-6 over ~198k steps passes its 3.4e-4 at the 51B start,
step 52,000; configs/flm-101b.toml). A stage changes the LR only when it asks: ``stages[i].lr`` (its start
LR) or ``stages[i].lr_scale`` scales the shared cosine from that stage on (later stages inherit the scaled
LR), reached at once or, with ``stages[i].warmup_steps``, by a linear move from the inherited LR (Table 1's
per-stage warmups). This is the *base* LR: under μP every parameter group multiplies it by its own
width-dependent factor (flm.mup), so after a width growth the hidden matrices' LRs drop by old/new fan-in
while the base LR is continuous.
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

    inherit: one cosine from the plan's first step to ``optim.decay_steps`` (default: the plan's length),
    peaking at the first stage's LR after its warmup; a later stage continues it, scaled to start at its
    ``lr`` (or by its ``lr_scale``), moved there from the inherited LR over its ``warmup_steps``.
    restart: each stage warms up to its own LR and decays over its own steps.
    """
    oc = cfg.optim
    first = stages[0]
    horizon = oc.decay_steps or sum(s.steps for s in stages)
    out: list[StageSchedule] = []
    start, inherited = 0, 1.0
    for s in stages:
        if cfg.lr_mode == "inherit":
            warmup = oc.warmup_steps if first.warmup_steps is None else first.warmup_steps
            base = CosineSchedule(first.lr or oc.lr, oc.min_lr, warmup, horizon, offset=start)
            if s is first:
                out.append(StageSchedule(base))
            else:
                scale = s.lr / (base(0) * inherited) if s.lr is not None else s.lr_scale or 1.0
                out.append(StageSchedule(base, inherited, scale, s.warmup_steps or 0))
                inherited *= scale
        else:
            warmup = oc.warmup_steps if s.warmup_steps is None else s.warmup_steps
            out.append(StageSchedule(CosineSchedule(s.lr or oc.lr, oc.min_lr, warmup, s.steps)))
        start += s.steps
    return out


@dataclass(frozen=True)
class StageLR:
    """What a stage's LR does: its first step, after its warmup (the stage-start LR of FLM-101B's Table 1),
    and its last step."""

    name: str
    first: float
    warmup: int
    after_warmup: float
    last: float


def stage_lrs(cfg: RunConfig, stages: Sequence[Stage]) -> list[StageLR]:
    """Each stage's LR at its start and end (`flm cost` prints them), from ``stage_schedules``."""
    out: list[StageLR] = []
    for i, (s, sched) in enumerate(zip(stages, stage_schedules(cfg, stages))):
        warmup = sched.base.warmup if i == 0 or cfg.lr_mode == "restart" else sched.rewarmup
        out.append(StageLR(s.name, sched(0), warmup, sched(min(warmup, s.steps - 1)), sched(s.steps - 1)))
    return out
