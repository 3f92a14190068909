"""A stage of ``flm run`` that starts from a literature growth baseline (``grow.method`` gstack, hyperclone or
net2net; flm.growth.baselines) instead of MSG.

Baselines run in memory: the previous stage's final checkpoint is loaded whole (a sharded one consolidated),
grown, and handed to the trainer as full tensors, fine at benchmark scale (MSG streams tensor by tensor). The
optimizer starts fresh (no moments, step 0) and there are no masks; the LR goes on as the run's schedule says.
``grow.ramp_steps`` still sets the window over which the trainer logs every loss and validates four times, so
the loss bump (flm.growth.bump) is measured as for MSG.
"""

from __future__ import annotations

from pathlib import Path

from flm.checkpoint import load_checkpoint
from flm.checkpoint.stage_init import StageInit
from flm.errors import FlmError
from flm.growth.baselines import grow_baseline
from flm.stages import Stage


def baseline_init(prev_ckpt: Path, stage: Stage, seed: int) -> StageInit:
    """Stage ``stage``'s start: the previous stage's final checkpoint ``prev_ckpt`` (already verified) grown by
    ``stage.growth.method``."""
    assert stage.growth is not None
    data, prev_cfg = load_checkpoint(prev_ckpt, verify=False)
    new_cfg, weights = grow_baseline(prev_cfg.model, data.model, stage.growth, seed)
    if new_cfg != stage.model:
        raise FlmError(f"stage {stage.index}: growth gives {new_cfg.shape()}, the plan says {stage.model.shape()}")
    tr = data.trainer
    return StageInit(
        model_state=weights,
        ramp={"step": 0, "total": stage.growth.ramp_steps},  # no masks: the loss-bump logging window only
        tokens=tr["tokens"],
        flops=tr["flops"],
        loader_state=tr.get("loader"),
    )
