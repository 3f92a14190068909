"""Progress bars: one rich display for every flm command (data preparation, growth, training, evaluation,
the μP tools), drawn on stderr unless a console is given.

``progress_bar`` yields a ``Bar``; when the bar is off, every ``Bar`` method does nothing, so callers never
branch on it. A transient bar (gone when done) is drawn only on a terminal. A lasting one, when its console is
not a terminal (a batch job's log), prints a plain line per row every ``FLM_PROGRESS_SECONDS`` (default 30)
seconds, with the rate's ETA, and every row's final line at the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

Unit = Literal["items", "bytes"] | None
LOG_SECONDS = 30.0  # between two progress lines in a log (FLM_PROGRESS_SECONDS overrides)


class Bar:
    """One row of a progress display."""

    def __init__(self, progress: Progress | None = None, task: TaskID | None = None) -> None:
        self._progress, self._task = progress, task

    @property
    def shown(self) -> bool:
        return self._progress is not None

    def advance(self, n: float = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def update(
        self,
        *,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
        info: str | None = None,
    ) -> None:
        """Set what is given; ``info`` is free text shown after the bar (e.g. tokens so far)."""
        if self._progress is None or self._task is None:
            return
        fields = {"info": info} if info is not None else {}
        self._progress.update(self._task, completed=completed, total=total, description=description, **fields)

    def start(self, total: float) -> Callable[[float], None]:
        """Set the total and return ``advance``: for APIs that learn their total late and take a
        ``progress(total) -> advance`` callback (``grow_checkpoint``)."""
        self.update(total=total)
        return self.advance

    def add(self, description: str, total: float | None = None) -> Bar:
        """Another row on the same display (e.g. the next phase of a job)."""
        if self._progress is None:
            return Bar()
        return Bar(self._progress, self._progress.add_task(description, total=total, info=""))


class _Log:
    """The display of a lasting bar in a log: plain lines, at most one every ``every`` seconds."""

    def __init__(self, console: Console, every: float) -> None:
        self.console, self.every = console, every
        self.rows: list[_LogRow] = []
        self.last = time.monotonic()

    def tick(self, row: _LogRow) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.print(row)

    def print(self, row: _LogRow) -> None:
        self.console.print(row.line(), highlight=False, markup=False, soft_wrap=True)
        row.dirty = False


class _LogRow(Bar):
    """One row of a ``_Log``: what it shows is kept, and printed as one line when the log says so."""

    def __init__(self, log: _Log, description: str, total: float | None, completed: float, unit: Unit) -> None:
        super().__init__()
        self.log, self.unit, self.label, self.dirty = log, unit, description, True
        self.description, self.total, self.completed, self.info = description, total, completed, ""
        self.t0, self.start_at = time.monotonic(), completed
        log.rows.append(self)

    @property
    def shown(self) -> bool:
        return True

    def advance(self, n: float = 1) -> None:
        self.update(completed=self.completed + n)

    def update(self, *, completed: float | None = None, total: float | None = None,
               description: str | None = None, info: str | None = None) -> None:
        self.completed = self.completed if completed is None else completed
        self.total = self.total if total is None else total
        self.description = self.description if description is None else description
        self.info = self.info if info is None else info
        self.dirty = True
        self.log.tick(self)

    def add(self, description: str, total: float | None = None) -> Bar:
        return _LogRow(self.log, description, total, 0, self.unit)

    def line(self) -> str:
        """The label (first description), count, description and info, e.g. "step 120/1000 loss 3.210
        12,345 tok/s | 0:01:02 elapsed, ETA 0:08:40"."""
        done, total, mb = self.completed, self.total, self.unit == "bytes"
        count = "" if self.unit is None else f"{done / 1e6:.1f} MB" if mb else f"{done:g}"
        if count and total is not None:
            count += f"/{total / 1e6:.1f} MB" if mb else f"/{total:g}"
        elapsed = time.monotonic() - self.t0
        desc = "" if self.description == self.label else self.description
        text = " ".join(x for x in (self.label, count, desc, self.info) if x) + f" | {_clock(elapsed)} elapsed"
        rate = (done - self.start_at) / elapsed if elapsed > 0 else 0.0
        if total is not None and done < total and rate > 0:
            text += f", ETA {_clock((total - done) / rate)}"
        return text


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


def _log_seconds() -> float:
    try:
        return float(os.environ.get("FLM_PROGRESS_SECONDS", LOG_SECONDS))
    except ValueError:
        return LOG_SECONDS


def _columns(unit: Unit) -> list[ProgressColumn]:
    counts: list[ProgressColumn] = {
        "items": [MofNCompleteColumn()],
        "bytes": [DownloadColumn(), TransferSpeedColumn()],
        None: [],
    }[unit]
    return [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *counts,
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]


@contextmanager
def progress_bar(
    description: str,
    total: float | None = None,
    *,
    enabled: bool = True,
    transient: bool = True,
    completed: float = 0,
    unit: Unit = "items",
    console: Console | None = None,
) -> Iterator[Bar]:
    """A bar of ``total`` steps (None: unknown yet) that starts at ``completed``. ``unit``: "items" shows
    done/total, "bytes" sizes and speed, None neither. ``transient``: the bar disappears when done."""
    console = console or Console(stderr=True)
    if not enabled or (transient and not console.is_terminal):
        yield Bar()
        return
    if not console.is_terminal:
        log = _Log(console, _log_seconds())
        yield _LogRow(log, description, total, completed, unit)
        for row in log.rows:
            if row.dirty:  # its last state is not in the log yet
                log.print(row)
        return
    with Progress(*_columns(unit), console=console, transient=transient) as progress:
        yield Bar(progress, progress.add_task(description, total=total, completed=completed, info=""))
