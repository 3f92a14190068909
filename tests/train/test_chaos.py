"""Chaos, the suite's version: a two-stage `flm run` (one growth) SIGKILLed while it prepares its data, while it
writes a checkpoint and while it grows, `--resume`d after each kill, ends with the checkpoints (every tensor),
metrics.jsonl and token cache of an uninterrupted run, bitwise. `python benchmarks/chaos.py` does the same
with 20 kills; the driver and the comparisons are its (benchmarks/chaos.py)."""

from __future__ import annotations

import pytest

from benchmarks.chaos import chaos


@pytest.mark.timeout(600)
def test_three_kills_at_data_checkpoint_and_growth_each_resume_bitwise(tmp_path):
    res = chaos(tmp_path, kills=3, seed=0, steps=(10, 10), say=print)
    assert res["kills"] == 3 and res["targets"] == {"data": 1, "checkpoint": 1, "growth": 1}
    assert res["final_bitwise"], res["diffs"]
    assert res["resumed_bitwise"] == 3, res["diffs"]
    assert len(res["phases"]) >= 2, res["kill_log"]  # the kills landed in different phases, as aimed
