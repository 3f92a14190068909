"""Preemption: SIGTERM and SIGUSR1 (what SLURM and cloud schedulers send some time before they kill a job)
ask the trainer to stop after the current optimizer step, at a checkpoint, instead of dying mid-step. The
first Ctrl-C (SIGINT) does the same (exit code 130, as an interrupted command); a second Ctrl-C aborts at once
(KeyboardInterrupt), keeping only the checkpoints already complete.

The handler only records the signal; the training loop asks ``StopRequest.agreed`` once per step. Under
torchrun that is an all-reduce (MAX) of a stop flag over the default group, so every rank stops after the
same step even when the signal reached them at different moments (or only some of them).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from flm.distributed.env import DistEnv

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(SystemExit):
    """Raised once the stop checkpoint is written: the process exits 0 (it did what the scheduler asked), or
    130 after Ctrl-C (what a shell expects of an interrupted command)."""

    def __init__(self, code: int = 0) -> None:
        super().__init__(code)


class StopRequest:
    """While entered: SIGTERM / SIGUSR1 / the first SIGINT set a flag instead of ending the process; the
    previous handlers come back on exit. Handlers can be set only in the main thread: elsewhere the signals
    keep their defaults."""

    def __init__(self, env: DistEnv) -> None:
        self.env = env
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():  # None: a handler not set from Python; the default is closest
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now, as without flm's handler
        self.signum = signum
        if signum == signal.SIGINT and self.env.is_main:
            print("\nCtrl-C: stopping after this step with a checkpoint; Ctrl-C again aborts at once (losing the "
                  "steps since the newest checkpoint)", file=sys.stderr, flush=True)

    @property
    def exit_code(self) -> int:
        return 130 if self.signum == signal.SIGINT else 0

    def agreed(self) -> bool:
        """Whether any rank was asked to stop. Every rank calls this once per step (a collective when
        distributed), so all of them stop after the same step."""
        asked = self.signum is not None
        if not self.env.distributed:
            return asked
        flag = torch.tensor([1.0 if asked else 0.0], device=self.env.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "another rank's signal"
