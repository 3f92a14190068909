"""MSG growth (Masked Structural Growth): function-preserving width, FFN, heads and depth operators.

- ``grow`` (ops.py): pure function on (model config, state dict, AdamW moments) -> bigger ones + masks.
- ``grow_model`` / ``MaskRamp`` (ramp.py): the same on a live model, and the 0 -> 1 mask ramp.
- ``grow_checkpoint`` (offline.py): streaming growth of a checkpoint folder (``flm grow``); with
  ``baseline_stage.py`` (a stage started from a literature baseline) and ``bump.py`` (the loss bump after a
  growth) it is the upper floor of this package, which reads and writes checkpoints: this ``__init__``
  re-exports the lower floor only (see .importlinter).
- ``grow_baseline`` (baselines.py): the literature baselines G_stack, HyperCloning and Net2Net (``grow.method``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flm.growth.baselines import grow_baseline
    from flm.growth.ops import GrowthResult, grow
    from flm.growth.plan import GrowthPlan, make_plan
    from flm.growth.ramp import GrownModel, MaskRamp, grow_model
    from flm.growth.spec import parse_growth_spec

# These names load on first use (PEP 562), not with the package: `flm grow --help` imports no torch.
_WHERE = {"grow_baseline": "baselines", "GrowthResult": "ops", "grow": "ops", "GrowthPlan": "plan",
          "make_plan": "plan", "GrownModel": "ramp", "MaskRamp": "ramp", "grow_model": "ramp",
          "parse_growth_spec": "spec"}
__all__ = ["GrownModel", "GrowthPlan", "GrowthResult", "MaskRamp", "grow", "grow_baseline", "grow_model", "make_plan",
           "parse_growth_spec"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"flm.growth.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
