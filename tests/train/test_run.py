"""`flm run`: a tiny three-stage plan (width growth, then depth growth), resumed across stage boundaries and
mid-ramp; bad plans rejected before training."""

from __future__ import annotations

import json
import shutil

import pytest
import tomli_w
import torch
from safetensors.torch import load_file

from flm.checkpoint import latest_checkpoint, list_checkpoints
from flm.cli import main
from flm.config import config_from_dict, dump_toml
from flm.train.metrics import read_metrics
from flm.train.run import run_plan, scratch_config, stage_summaries


def plan_dict(base: dict) -> dict:
    base = dict(base)
    base["train"] = {**base["train"], "ckpt_every": 2, "keep_last": 10, "eval_every": 4}
    base["stages"] = [
        {"steps": 8},
        {"steps": 6, "lr_scale": 1.5, "grow": {"d_model": 64, "ramp_steps": 3}},
        {"steps": 6, "grow": {"n_layers": 4, "ramp_steps": 3, "depth_position": "interleave"}},
    ]
    return base


def refusal(plan: dict, tmp_path, capsys) -> str:
    """The one error line of `flm run` on ``plan``, which must stop before it writes anything."""
    path = tmp_path / "plan.toml"
    path.write_text(tomli_w.dumps(plan))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not out.exists()
    return err


def final_weights(run, stage=3):
    return load_file(str(latest_checkpoint(run / f"stage{stage}") / "model.safetensors"))


def test_three_stage_plan_preserves_function_and_resumes_exactly(tiny_cfg, tmp_path):
    cfg = config_from_dict(plan_dict(tiny_cfg()))
    run_plan(cfg, tmp_path / "a")
    sums = stage_summaries(tmp_path / "a")
    assert [s["stage"] for s in sums] == [1, 2, 3]
    assert [s["d_model"] for s in sums] == [32, 64, 64] and [s["n_layers"] for s in sums] == [2, 2, 4]
    for before, after in zip(sums, sums[1:]):  # growth is function-preserving
        assert after["val_start"] == pytest.approx(before["val_end"], rel=1e-5)
    report = (tmp_path / "a" / "report.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in report if line.startswith("| ") and "M |" in line] == ["1", "2", "3"]
    assert (tmp_path / "a" / "loss.png").stat().st_size > 10_000
    rows = read_metrics(tmp_path / "a" / "metrics.jsonl")
    bumps = [r for r in rows if r.get("event") == "growth loss bump"]  # one per growth, in metrics and report
    assert [(r["stage"], r["ramp_steps"]) for r in bumps] == [(2, 3), (3, 3)]
    assert all(r["loss_bump"] >= 0 and r["val_loss_bump"] >= 0 for r in bumps)
    assert sum(line.startswith("- Loss bump of the growth into stage") for line in report) == 2
    assert rows[-1]["tokens"] == 20 * 4 * 32
    # stage 3's new blocks (1 and 3) got zero gradient at m = 0: their AdamW count starts one step later
    meta = json.loads((list_checkpoints(tmp_path / "a" / "stage3")[-1] / "optim.json").read_text())
    assert meta["step"] == 20 and {n.split(".")[1] for n in meta["param_steps"]} == {"1", "3"}
    assert set(meta["param_steps"].values()) == {5}

    # Crash right after stage 2 finished: stage 3 is grown again and trained to the same bytes.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "stage3")
    run_plan(cfg, tmp_path / "b", resume=True)
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Crash in the middle of stage 3's mask ramp (its step-2 checkpoint is at m = 2/3).
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    ckpts = list_checkpoints(tmp_path / "c" / "stage3")
    assert (ckpts[0] / "growth.safetensors").is_file()
    for p in ckpts[1:]:
        shutil.rmtree(p)
    run_plan(cfg, tmp_path / "c", resume=True)
    c = final_weights(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert [r["loss"] for r in read_metrics(tmp_path / "c" / "metrics.jsonl") if "loss" in r] == [
        r["loss"] for r in rows if "loss" in r
    ]


@pytest.mark.parametrize(
    "lr_mode, stage, warmup, needle",
    [
        ("inherit", None, 21, "optim.warmup_steps (21) is longer than the whole plan (20 steps"),
        ("inherit", 1, 7, "stages[1].warmup_steps (7) is longer than stage 2 (6 steps)"),
        ("restart", None, 7, "optim.warmup_steps (7) is longer than stage 2 (6 steps; lr_mode 'restart'"),
    ],
)
def test_a_warmup_longer_than_its_steps_is_refused_before_training(tiny_cfg, tmp_path, capsys, lr_mode, stage,
                                                                   warmup, needle):
    d = {**plan_dict(tiny_cfg()), "lr_mode": lr_mode}
    (d["optim"] if stage is None else d["stages"][stage])["warmup_steps"] = warmup
    assert needle in refusal(d, tmp_path, capsys)


@pytest.mark.parametrize(
    "grow, needle",
    [
        ({"d_model": 16}, "cannot shrink"),
        ({"n_layers": 1}, "cannot shrink"),
        ({"d_model": 40}, "head_dim"),
        ({"n_layers": 3, "depth_position": [7]}, "stages[1]: grow.depth_position"),
        ({"n_layers": 3, "depth_copy_from": 9}, "stages[1]: "),
    ],
)
def test_bad_plans_are_rejected_before_training(tiny_cfg, tmp_path, capsys, grow, needle):
    d = plan_dict(tiny_cfg())
    d["stages"][1]["grow"] = {**grow, "ramp_steps": 1}
    assert needle in refusal(d, tmp_path, capsys)


def test_scratch_baseline_matches_tokens_or_flops(tiny_cfg):
    cfg = config_from_dict(plan_dict(tiny_cfg()))
    by_tokens = scratch_config(cfg, "tokens")
    assert by_tokens.model == cfg.stage_models()[-1] and by_tokens.train.steps == 20
    by_flops = scratch_config(cfg, "flops")
    assert by_flops.train.steps < by_tokens.train.steps
    assert dump_toml(by_flops)


def test_a_run_without_validation_data_fails_before_writing(tiny_cfg, tmp_path, capsys):
    d = plan_dict(tiny_cfg())
    d["data"] = {**d["data"], "valid": []}
    path = tmp_path / "plan.toml"
    path.write_text(dump_toml(config_from_dict(d)))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "no valid data" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_resume_names_the_keys_that_changed_and_flm_train_keeps_out_of_a_run_folder(tiny_cfg, tmp_path, capsys):
    d = plan_dict(tiny_cfg())
    d["stages"] = d["stages"][:2]
    d["stages"][0]["steps"], d["stages"][1]["steps"] = 2, 3
    path = tmp_path / "plan.toml"
    path.write_text(dump_toml(config_from_dict(d)))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    metrics = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(out), "--resume", "--set", "optim.lr=0.01"]) == 2
    assert "in optim.lr;" in capsys.readouterr().err
    single = tmp_path / "single.toml"
    single.write_text(dump_toml(config_from_dict(tiny_cfg(steps=2))))
    for extra in ([], ["--resume"]):
        assert main(["train", str(single), "--out", str(out), *extra]) == 2
        assert "holds a progressive run" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_bytes() == metrics
