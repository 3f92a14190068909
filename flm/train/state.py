"""The stateful parts of training that are not already objects of their own: model + optimizer tensors
gathered to (and scattered from) full, unsharded tensors, the RNG streams, and the stage's counters.

Each part has ``state_dict()`` / ``load_state_dict()``; the trainer saves and restores them together, so a
resumed stage continues bitwise. The loader (``TokenLoader``) and the mask ramp (``MaskRamp``) already
follow the same protocol.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from flm.parallel import DistEnv


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


class ModelOptimizerState:
    """Model weights and AdamW moments as full tensors keyed by parameter name (what checkpoints hold),
    whatever the model's sharding: gathered to rank 0 (on the CPU) to save, scattered on load."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv) -> None:
        self.model, self.optimizer, self.env = model, optimizer, env

    def model_state(self) -> dict[str, Tensor]:
        if not self.env.distributed:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.model, options=options)

    def load_model_state(self, state: dict[str, Tensor]) -> None:
        if not self.env.distributed:
            self.model.load_state_dict(state, strict=True)
            return
        set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))

    def optim_state(self) -> tuple[dict[str, Tensor], int]:
        """AdamW moments keyed "exp_avg/<param>" and "exp_avg_sq/<param>", and the step count."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=self.env.distributed)
        osd = get_optimizer_state_dict(self.model, self.optimizer, options=options)
        tensors: dict[str, Tensor] = {}
        step = 0
        for name, st in osd.get("state", {}).items():  # empty on ranks > 0 when gathered to rank 0
            step = int(st["step"])
            tensors[f"exp_avg/{name}"] = st["exp_avg"].detach().cpu().clone()
            tensors[f"exp_avg_sq/{name}"] = st["exp_avg_sq"].detach().cpu().clone()
        return tensors, step

    def load_optim_state(self, tensors: dict[str, Tensor], step: int) -> None:
        if not tensors:
            return
        names = {n.split("/", 1)[1] for n in tensors}
        state = {
            n: {
                "step": torch.tensor(float(step)),
                "exp_avg": tensors[f"exp_avg/{n}"],
                "exp_avg_sq": tensors[f"exp_avg_sq/{n}"],
            }
            for n in names
        }
        groups = [
            {k: v for k, v in g.items() if k != "params"} | {"params": list(g["names"])}
            for g in self.optimizer.param_groups
        ]
        set_optimizer_state_dict(
            self.model, self.optimizer, {"state": state, "param_groups": groups},
            options=StateDictOptions(full_state_dict=True),
        )
