"""Metrics: JSON lines on disk (truncated on resume so the log matches an uninterrupted run), TensorBoard
when it is installed, and the fp32 matmul peak that CPU MFU is measured against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flm.io import atomic_write


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True, tensorboard_dir: Path | None = None) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(tensorboard_dir))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def truncate_after(self, step: int, stage: int = 0) -> None:
        """Drop lines logged after (stage, step): they belong to the part of a run that a resume replays."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [
            json.dumps(r) for r in read_metrics(self.path) if (r.get("stage", 0), r["step"]) <= (stage, step)
        ]
        atomic_write(self.path, "".join(line + "\n" for line in keep))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "stage"):
                    self.tb.add_scalar(k, v, record["tokens"])  # tokens: one axis across stages

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a crash mid-write
            continue
    return rows
