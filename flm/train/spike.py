"""The loss-spike and NaN guard (``train.spike``): a step whose loss or gradient norm is not finite, or whose loss
is above ``factor`` x the mean of the last ``window`` accepted losses, is skipped (no update to weights, moments
or the step count; the batch is consumed, as PaLM skipped the batches around its spikes). Past ``max_events``
the run stops with one line. Its state (recent losses, event count) goes into every checkpoint, so a resumed
run judges the next steps exactly as the uninterrupted one would."""

from __future__ import annotations

import math
from typing import Any

from flm.config import SpikeConfig
from flm.errors import FlmError


class SpikeGuard:
    def __init__(self, cfg: SpikeConfig | None) -> None:
        self.cfg = cfg
        self.recent: list[float] = []
        self.events = 0

    def judge(self, loss: float, grad_norm: float) -> str | None:
        """Why this step must be skipped, or None (the step is accepted and its loss remembered). Without
        ``train.spike``, a non-finite loss stops the run as before."""
        if self.cfg is None:
            return None
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"non-finite loss {loss} or gradient norm {grad_norm}"
        if len(self.recent) >= min(self.cfg.window, 5):  # a running mean worth comparing with
            mean = sum(self.recent) / len(self.recent)
            if loss > self.cfg.factor * mean:
                return f"loss {loss:.4g} above {self.cfg.factor:g} x the running mean {mean:.4g}"
        self.recent = (self.recent + [loss])[-self.cfg.window :]
        return None

    def count(self, step: int, reason: str) -> None:
        """One more skipped step; past ``max_events`` the run stops."""
        assert self.cfg is not None
        self.events += 1
        if self.events > self.cfg.max_events:
            raise FlmError(
                f"step {step}: {self.events} steps skipped by train.spike (max_events = {self.cfg.max_events}), "
                f"the last for {reason}; lower optim.lr, raise optim.warmup_steps, or resume from an earlier checkpoint"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "events": self.events}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.recent, self.events = [float(x) for x in state["recent"]], int(state["events"])
