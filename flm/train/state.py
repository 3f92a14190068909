"""The stateful parts of training that are not already objects of their own: the RNG streams and the stage's
counters and progress.

Each part has ``state_dict()`` / ``load_state_dict()``; the ``CheckpointManager`` (flm.checkpoint.manager)
saves and restores them together, so a resumed stage continues bitwise. The loader (``TokenLoader``), the mask
ramp (``MaskRamp``) and the spike guard follow the same protocol; model weights and AdamW moments go through
``flm.checkpoint.model_state.ModelState`` (gathered from, and scattered to, whatever layout the model has).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class RngState:
    """torch's CPU (and CUDA) generator: dropout draws from it, so a resume restores it."""

    def state_dict(self) -> dict[str, Tensor]:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "torch" in state:
            torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


@dataclass
class Counters:
    """Where the stage is: optimizer steps, tokens and FLOPs so far (across stages for the last two), and
    the seconds spent before the current process started (a resumed stage keeps counting)."""

    step: int = 0
    tokens: int = 0
    flops: float = 0.0
    seconds: float = 0.0

    def advance(self, tokens: int, flops_per_token: float) -> None:
        self.step += 1
        self.tokens += tokens
        self.flops += flops_per_token * tokens

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens, self.flops = int(state["step"]), int(state["tokens"]), float(state["flops"])
        self.seconds = float(state.get("seconds", 0.0))


@dataclass
class Progress:
    """A stage's place as trainer.json's top level holds it: the stage, its ``Counters``, the seconds spent
    (earlier processes' and this one's since ``started``) and the last training loss."""

    stage: int
    counters: Counters
    train_loss: float = math.nan
    started: float = field(default_factory=time.perf_counter)  # when this process began training

    def seconds(self) -> float:
        return self.counters.seconds + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, **self.counters.state_dict(), "seconds": self.seconds(),
                "train_loss": self.train_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counters.load_state_dict(state)
        self.train_loss = float(state.get("train_loss", math.nan))
