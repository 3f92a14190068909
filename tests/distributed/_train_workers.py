"""What the spawned ranks run for the trainer tests: ``train_stage`` under each layout, uninterrupted and
stopped + resumed, each into its own run folder (the pytest process compares them with one process)."""

from __future__ import annotations

import os
from pathlib import Path

from flm.config import config_from_dict
from flm.train.loop import train_stage
from flm.train.run import run_plan


def train_layouts(rank: int, world: int, tmp: Path, cfg: dict, layouts: dict[str, dict], stop_at: int) -> None:
    """For each layout name -> [parallel] table: tmp/<name>/full trained to the end; tmp/<name>/cut stopped
    after ``stop_at`` steps, then resumed from its checkpoint to the end."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    for name, parallel in layouts.items():
        run_cfg = config_from_dict(cfg | {"parallel": parallel})
        train_stage(run_cfg, tmp / name / "full")
        train_stage(run_cfg, tmp / name / "cut", stop_after=stop_at)
        train_stage(run_cfg, tmp / name / "cut", resume=True)


def run_layouts(rank: int, world: int, tmp: Path, plan: dict) -> None:
    """``flm run``'s ``run_plan`` of ``plan`` (whose stages change layout) into tmp/run."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    run_plan(config_from_dict(plan), tmp / "run")


def train_then_resume(rank: int, world: int, tmp: Path, cfg: dict, jobs: list[tuple[str, dict, int | None, bool]]
                      ) -> None:
    """Each job (run folder, [parallel] table, stop_after, resume) in order, under ``world`` ranks."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    for folder, parallel, stop_after, resume in jobs:
        train_stage(config_from_dict(cfg | {"parallel": parallel}), tmp / folder, stop_after=stop_after,
                    resume=resume)
