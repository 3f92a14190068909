"""`flm run` with literature baselines between stages (grow.method): HyperCloning keeps the validation loss across
the growth, G_stack doubles the depth, both start a fresh optimizer and leave no masks; `flm grow` refuses them."""

from __future__ import annotations

import json

import pytest

from flm.checkpoint import latest_checkpoint, list_checkpoints
from flm.config import GrowthConfig, config_from_dict
from flm.errors import FlmError
from flm.growth.offline import grow_checkpoint
from flm.stages import resolve_stages
from flm.train.metrics import read_metrics
from flm.train.run import run_plan, stage_summaries


def test_hyperclone_then_gstack_in_a_run(tiny_cfg, tmp_path):
    base = tiny_cfg()
    base["train"] = {**base["train"], "ckpt_every": 2, "keep_last": 10, "eval_every": 4}
    base["stages"] = [
        {"steps": 6},
        {"steps": 4, "grow": {"method": "hyperclone", "d_model": 64, "d_ff": 256, "ramp_steps": 2}},
        {"steps": 4, "grow": {"method": "gstack", "n_layers": 4, "ramp_steps": 2}},
    ]
    run = run_plan(config_from_dict(base), tmp_path / "run")
    sums = stage_summaries(run)
    assert [(s["d_model"], s["n_layers"]) for s in sums] == [(32, 2), (64, 2), (64, 4)]
    assert sums[1]["val_start"] == pytest.approx(sums[0]["val_end"], rel=1e-5)  # HyperCloning keeps the function
    assert sums[2]["val_start"] != pytest.approx(sums[1]["val_end"], rel=1e-5)  # G_stack does not
    for stage in (2, 3):
        first = list_checkpoints(run / f"stage{stage}")[0]  # at step 2 of the stage
        assert json.loads((first / "optim.json").read_text())["step"] == 2  # a fresh optimizer, not the run's count
        assert not (first / "growth.safetensors").exists()  # no masks
    rows = read_metrics(run / "metrics.jsonl")
    bumps = [r for r in rows if r.get("event") == "growth loss bump"]
    assert [r["stage"] for r in bumps] == [2, 3] and bumps[1]["val_loss_bump"] > 0
    assert latest_checkpoint(run / "stage3") is not None


def test_flm_grow_refuses_a_baseline(tmp_path):
    with pytest.raises(FlmError, match="runs only between the stages"):
        grow_checkpoint(tmp_path / "nothing", GrowthConfig(method="gstack", n_layers=4), tmp_path / "out")


def test_a_plan_with_an_unreachable_baseline_shape_is_refused_before_training(tiny_cfg):
    base = tiny_cfg()
    base["stages"] = [{"steps": 4}, {"steps": 4, "grow": {"method": "gstack", "n_layers": 3}}]
    with pytest.raises(FlmError, match=r"stages\[1\].grow.n_layers = 3: gstack repeats all 2 layers"):
        resolve_stages(config_from_dict(base))
