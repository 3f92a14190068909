"""Growth on a live model, for the trainer: ``grow_model`` and the mask ramp ``MaskRamp``.

The trainer grows between stages, then calls ``ramp.step(model)`` after every optimizer step: m goes
0 -> 1 linearly over ``ramp_steps`` steps, then the masks are removed and the forward pass is the plain
one. ``MaskRamp.state_dict()`` ({"step", "total"}) goes in trainer.json and ``model.growth_state()`` in
growth.safetensors, so a run resumes mid-ramp.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from flm.config import GrowthConfig
from flm.errors import FlmError
from flm.growth.ops import GrowthResult, grow
from flm.model import FLM


class MaskRamp:
    """m = min(1, step / total); at step >= total the masks are removed (``model.end_growth()``)."""

    def __init__(self, total: int, step: int = 0) -> None:
        if total < 0 or step < 0:
            raise ValueError(f"MaskRamp needs total >= 0 and step >= 0, got {total}, {step}")
        self.total = total
        self.done_steps = step

    @property
    def active(self) -> bool:
        return self.done_steps < self.total

    @property
    def value(self) -> float:
        return 1.0 if self.total == 0 else min(1.0, self.done_steps / self.total)

    def apply(self, model: FLM) -> None:
        """Put the model at the ramp's current point (after a grow, or on resume)."""
        if self.active:
            model.set_mask_value(self.value)
        else:
            model.end_growth()

    def step(self, model: FLM) -> None:
        """One optimizer step done: advance m, or remove the masks when the ramp ends."""
        if not self.active:
            return
        self.done_steps += 1
        self.apply(model)

    def state_dict(self) -> dict[str, int] | None:
        """{"step", "total"} of a ramp; None when there is none (total 0), as trainer.json holds it."""
        return {"step": self.done_steps, "total": self.total} if self.total else None

    def load_state_dict(self, state: Mapping[str, int] | None) -> None:
        """Take a checkpoint's ramp (None: no ramp) in place."""
        self.total, self.done_steps = (int(state["total"]), int(state["step"])) if state else (0, 0)

    @classmethod
    def from_state(cls, state: Mapping[str, int]) -> MaskRamp:
        return cls(int(state["total"]), int(state["step"]))


@dataclass
class GrownModel:
    model: FLM
    optim_state: dict[str, Tensor] | None  # "exp_avg/<param>" ... ; None: restart the optimizer
    ramp: MaskRamp
    result: GrowthResult


@torch.no_grad()
def grow_model(
    model: FLM,
    growth: GrowthConfig,
    optim_state: Mapping[str, Tensor] | None = None,
    seed: int = 0,
) -> GrownModel:
    """Grow a plain (unsharded) model and its AdamW moments; the new model computes the old function
    (masks at m = 0) on the same device and dtype. Rebuild the optimizer's parameter groups from the new
    model (``flm.mup.param_groups``) and load ``optim_state`` into them, keeping the step count."""
    if model.growing:
        raise FlmError("a growth ramp is still running on this model; finish it before growing again")
    res = grow(model.cfg, model.state_dict(), growth, optim_state, seed=seed)
    p = next(model.parameters())
    with torch.device("meta"):
        new = FLM(res.cfg)
    new = new.to_empty(device=p.device).to(p.dtype)
    new.load_state_dict(res.state_dict, strict=True)
    new.load_growth_state(res.mask_state)
    new.train(model.training)
    ramp = MaskRamp(growth.ramp_steps)
    ramp.apply(new)
    return GrownModel(new, res.optim_state, ramp, res)
