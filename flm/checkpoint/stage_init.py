"""Where a training stage starts when it does not start from scratch: the state a grown model, a growth
baseline or ``flm train --init`` hands to the trainer. It sits with the checkpoints because every such start
is read from one (and growth, above this layer, builds it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor


@dataclass
class StageInit:
    """Where a stage starts when it does not start from scratch (a grown model, in ``flm run``)."""

    model_state: Mapping[str, Tensor]  # full tensors; a grown stage's are built lazily (GrownTensors)
    optim_tensors: Mapping[str, Tensor] = field(default_factory=dict)
    optim_step: int = 0
    optim_param_steps: dict[str, int] = field(default_factory=dict)  # counts that differ from optim_step
    growth_state: dict[str, Tensor] = field(default_factory=dict)
    ramp: dict[str, int] | None = None
    tokens: int = 0
    flops: float = 0.0
    loader_state: dict[str, Any] | None = None
    tokenizer: Any = None  # `flm train --init`: the checkpoint's, which the prepared data must use
    source: Path | None = None  # that checkpoint
