"""One logger for flm: rank-aware, with levels, on the console and in a file beside metrics.jsonl.

Modules log with ``log = get_logger(__name__)``, then ``log.info`` for what a run is doing (stdout) and
``log.warning`` / ``log.error`` for notes and problems (stderr); the text is the message alone, as a print
would show it. Under torchrun only rank 0 speaks unless ``FLM_LOG_RANKS=all`` (then each line starts with
``[rank N]``); ``FLM_LOG_LEVEL`` (debug, info, warning, error) sets the level. ``log_to_file`` adds the
run folder's ``log.txt``, with time, level and rank on each line. The command's final output (the CLI) and the
progress display (flm.progress) print directly: they are the command's answer, not a log.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = "flm"
LOG_FILE = "log.txt"  # in the run folder, beside metrics.jsonl
LEVEL_ENV, RANKS_ENV = "FLM_LOG_LEVEL", "FLM_LOG_RANKS"


class _Ranks(logging.Filter):
    """Lets a record through on rank 0, or on every rank when asked (``FLM_LOG_RANKS=all``)."""

    def __init__(self) -> None:
        super().__init__()
        self.rank = int(os.environ.get("RANK", "0"))
        self.all = os.environ.get(RANKS_ENV, "").lower() == "all"

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return self.all or self.rank == 0


class _Console(logging.Handler):
    """stdout below WARNING, stderr from WARNING up; looked up at each record, so a redirected
    ``sys.stdout`` (pytest's capture, a `contextlib.redirect_stdout`) gets it."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        prefix = f"[rank {record.rank}] " if _RANKS.all else ""
        try:
            stream.write(prefix + record.getMessage() + "\n")
            stream.flush()
        except Exception:  # a closed pipe must not turn a log line into a traceback
            self.handleError(record)


_RANKS = _Ranks()


def _root() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not root.handlers:
        root.propagate = False
        console = _Console()
        console.addFilter(_RANKS)  # on the handler: a logger's own filters do not see its children's records
        root.addHandler(console)
        root.setLevel(os.environ.get(LEVEL_ENV, "INFO").upper())
    return root


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (``__name__``), under flm's root logger."""
    _root()
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


def set_rank(rank: int, all_ranks: bool | None = None) -> None:
    """This process's rank (set when the process group starts); ``all_ranks``: every rank logs."""
    _RANKS.rank = rank
    if all_ranks is not None:
        _RANKS.all = all_ranks


@contextmanager
def logging_to(folder: Path) -> Iterator[None]:
    """Also write the log to ``folder/log.txt`` while inside (appended: a resumed run goes on in the same
    file). The file is created at the first line only, so a run that logs nothing leaves nothing behind."""
    handler = log_to_file(folder)
    try:
        yield
    finally:
        close_file(handler)


def log_to_file(folder: Path) -> logging.Handler | None:
    """Also write the log to ``folder/log.txt``; returns the handler for ``close_file``. Every rank that logs
    writes, so with all ranks on the lines say which."""
    if not (_RANKS.all or _RANKS.rank == 0):
        return None
    handler = logging.FileHandler(Path(folder) / LOG_FILE, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s rank %(rank)s %(name)s: %(message)s"))
    handler.addFilter(_RANKS)
    _root().addHandler(handler)
    return handler


def close_file(handler: logging.Handler | None) -> None:
    if handler is not None:
        _root().removeHandler(handler)
        handler.close()
