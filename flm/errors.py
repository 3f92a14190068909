"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager


class FlmError(Exception):
    """A mistake in the user's input (config, paths, checkpoints). Message: what, where, how to fix."""

    exit_code = 2
    every_rank = False  # raised alike by every rank of a torchrun job: the CLI prints it once, from rank 0


def every_rank_error(message: str) -> FlmError:
    """The FlmError one rank found and sent to all (rank0_first, verify_checkpoint): printed once."""
    e = FlmError(message)
    e.every_rank = True
    return e


def leave_after_rank0(code: int, wait_s: float = 60.0) -> None:
    """On a rank other than 0, after an error every rank raised: rank 0 prints it and exits, and torchrun then
    stops the other ranks with SIGTERM. Wait for that and leave with the error's own exit code, so that
    torchrun reports every rank's code (not -15) and prints nothing of ours twice."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # not under torchrun: nobody stops us, leave now
        return
    signal.signal(signal.SIGTERM, lambda *_: os._exit(code))
    time.sleep(wait_s)


@contextmanager
def alike_on_every_rank() -> Iterator[None]:
    """Mark the FlmErrors raised inside as ones every rank raises alike (checks of the same config, layout
    and files on every rank), so a job of N ranks prints one line, not N."""
    try:
        yield
    except FlmError as e:
        e.every_rank = True
        raise
