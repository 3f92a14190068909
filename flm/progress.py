"""Progress bars: one rich display for every flm command (data preparation, growth, training, evaluation,
the μP tools), drawn on stderr unless a console is given.

``progress_bar`` yields a ``Bar``; when the bar is off, every ``Bar`` method does nothing, so callers never
branch on it. A transient bar (gone when done) is drawn only on a terminal; a lasting one leaves its final
state in a log too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    with Progress(*_columns(unit), console=console, transient=transient) as progress:
        yield Bar(progress, progress.add_task(description, total=total, completed=completed, info=""))
