"""The loss-spike and NaN guard (``train.spike``): a step whose loss or gradient norm is not finite, or whose loss
is above ``factor`` x the mean of the last ``window`` accepted losses, is refused. ``action = "skip"`` drops its
update (no change to weights, moments or the step count; the batch is consumed, as PaLM skipped the batches
around its spikes). ``action = "rollback"`` reloads the last good checkpoint (weights, moments, step, this
guard's state, data position) and then moves the data stream past the batches from that checkpoint up to and
including the bad one, logging their positions: training goes on with the batch after the bad one, as if those
batches had never been in the data. Past ``max_events`` the run stops with one line. The guard's state (recent
losses, event count) goes into every checkpoint, so a resumed run judges the next steps exactly as the
uninterrupted one would."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flm.config import SpikeConfig
from flm.data.loader import TokenLoader
from flm.errors import FlmError
from flm.train.metrics import MetricsLog, read_metrics
from flm.train.state import Counters

SKIPPED, ROLLED_BACK = "spike skipped", "spike rolled back"  # the "event" of their metrics.jsonl records


class SpikeGuard:
    def __init__(self, cfg: SpikeConfig | None) -> None:
        self.cfg = cfg
        self.recent: list[float] = []
        self.events = 0

    @property
    def rolls_back(self) -> bool:
        return self.cfg is not None and self.cfg.action == "rollback"

    def judge(self, loss: float, grad_norm: float) -> str | None:
        """Why this step must be refused, or None (the step is accepted and its loss remembered). Without
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
        """One more refused step; past ``max_events`` the run stops."""
        assert self.cfg is not None
        self.events += 1
        if self.events > self.cfg.max_events:
            what = "steps skipped" if self.cfg.action == "skip" else "loss spikes rolled back or skipped"
            raise FlmError(
                f"step {step}: {self.events} {what} by train.spike (max_events = {self.cfg.max_events}), "
                f"the last for {reason}; lower optim.lr, raise optim.warmup_steps, or resume from an earlier checkpoint"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "events": self.events}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.recent, self.events = [float(x) for x in state["recent"]], int(state["events"])


def roll_back(guard: SpikeGuard, loader: TokenLoader, counters: Counters, metrics: MetricsLog,
              restore: Callable[[Path], None], folder: Path | None) -> dict[str, Any]:
    """Undo the steps since ``folder`` (the last good checkpoint, reloaded through ``restore``) and move
    ``loader`` past the bad batch, which it has just read: the global samples from the checkpoint's position up
    to the end of that batch are never trained on. The guard keeps counting events across the rollback (else
    the same spike could roll back forever). Returns the fields the event's metrics record adds to a skip's;
    without a checkpoint yet, the step is only skipped, and the record says so.

    The restore drops the log lines after the checkpoint (the discarded steps), but not earlier spike events.
    The record's step is the spiking one, after the checkpoint: a resume from that checkpoint (after a kill)
    replays the spike and logs it again, in place of the dropped line."""
    if folder is None:
        return {"note": "no checkpoint to roll back to yet: skipped instead"}
    after_bad, events, spike_step = loader.state_dict(), guard.events, counters.step + 1
    logs = metrics.enabled and metrics.path.is_file()  # the main rank's
    logged = [r for r in read_metrics(metrics.path) if r.get("event")] if logs else []
    restore(folder)
    kept = read_metrics(metrics.path) if logs else []
    for r in logged:
        if r not in kept:
            metrics.write(r)
    at_checkpoint = loader.state_dict()
    loader.load_state_dict(after_bad)
    guard.events = max(guard.events, events)
    return {"event": ROLLED_BACK, "step": spike_step, "checkpoint": str(folder), "to_step": counters.step,
            "skipped_samples": [at_checkpoint["samples"], after_bad["samples"]],  # global sample numbers [a, b)
            "data_from": at_checkpoint}


def describe(record: dict[str, Any]) -> str:
    """One line for a spike event of metrics.jsonl: what the run printed, and report.md's line."""
    head = f"stage {record['stage']}, " if record.get("stage") else ""
    at = record.get("spike_step", record["step"] + 1)
    if record["event"] == ROLLED_BACK:
        a, b = record["skipped_samples"]
        return (f"{head}step {at}: {record['reason']}; rolled back to {record['checkpoint']} "
                f"(step {record['to_step']}), skipping global samples {a}..{b - 1}")
    note = f" ({record['note']})" if record.get("note") else ""
    return f"{head}step {at} skipped: {record['reason']}{note}"
