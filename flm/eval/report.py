"""Tables and JSON output shared by the ``flm eval`` commands."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from flm.io import atomic_write


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> None:
    """A rich table on stdout: the first ``left`` columns left-aligned, the rest right-aligned."""
    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i < left else "right")
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    Console().print(table)


def write_json(path: str | Path | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), json.dumps(data, indent=2) + "\n")


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """One JSON object per line (``--samples``)."""
    atomic_write(Path(path), "".join(json.dumps(r) + "\n" for r in rows))
