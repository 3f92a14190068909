"""JSON Lines input, shared by the corpus reader (flm.data.prepare) and the teacher-item reader."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from flm.errors import FlmError


def json_lines(lines: Iterable[str], path: Path, where: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line; a malformed line is one clear error."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except ValueError as e:
            raise FlmError(f"{where}: {path}:{lineno}: not valid JSON ({e}); fix or remove the line") from None
