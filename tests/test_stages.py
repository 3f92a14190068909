"""The stage planner: steps and tokens per stage, per-stage overrides and layouts, and the plans it refuses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from flm.cli import main
from flm.config import config_from_dict, load_config
from flm.errors import FlmError
from flm.stages import resolve_stages

SEQ = 32
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _cfg(stages: list[dict] | None = None, **parts) -> dict:
    data = {
        "name": "plan",
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": SEQ},
        "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 4},
        "train": {"steps": 10, "batch_size": 4},
        "stages": stages or [],
    }
    data.update(parts)
    return data


def _three(**parts) -> dict:
    parts.setdefault("lr_mode", "restart")  # a stage's own lr; under 'inherit' a later stage scales the inherited one
    lr = {"lr": 5e-4} if parts["lr_mode"] == "restart" else {"lr_scale": 0.5}
    return _cfg([
        {"steps": 20},
        {"tokens": 1000, "batch_size": 8, **lr, "warmup_steps": 2, "name": "wide",
         "parallel": {"tp": 2, "dp": 1}, "tflops_per_gpu": 10.0, "grow": {"d_model": 128, "ramp_steps": 3}},
        {"steps": 6, "grow": {"n_layers": 4, "ramp_steps": 6}},
    ], **parts)


def test_a_config_without_stages_is_one_stage():
    (only,) = resolve_stages(config_from_dict(_cfg()))
    assert (only.index, only.name, only.where, only.folder) == (1, "plan", "config", "stage1")
    assert (only.steps, only.tokens, only.batch_size) == (10, 10 * 4 * SEQ, 4)
    assert only.growth is None and only.lr is None and only.warmup_steps is None and only.tflops_per_gpu is None
    assert only.cfg.stages == [] and only.cfg.train.steps == 10


def test_steps_or_tokens_and_per_stage_overrides():
    cfg = config_from_dict(_three())
    first, wide, deep = resolve_stages(cfg)
    assert [s.index for s in (first, wide, deep)] == [1, 2, 3]
    assert [s.name for s in (first, wide, deep)] == ["stage 1", "wide", "stage 3"]
    assert [s.folder for s in (first, wide, deep)] == ["stage1", "stage2", "stage3"]
    assert [s.where for s in (first, wide, deep)] == ["stages[0]", "stages[1]", "stages[2]"]
    # steps -> tokens at the stage's own batch; tokens kept exactly, trained in whole steps (rounded up)
    assert (first.steps, first.tokens) == (20, 20 * 4 * SEQ)
    assert (wide.steps, wide.tokens) == (math.ceil(1000 / (8 * SEQ)), 1000) == (4, 1000)
    assert (deep.steps, deep.tokens, deep.batch_size) == (6, 6 * 4 * SEQ, 4)
    # the stage's single-stage training config: model, steps, batch, start LR, parallel layout
    assert [s.model.d_model for s in (first, wide, deep)] == [64, 128, 128]
    assert [s.model.n_layers for s in (first, wide, deep)] == [2, 2, 4]
    assert all(s.cfg.stages == [] for s in (first, wide, deep))
    assert [s.cfg.train.steps for s in (first, wide, deep)] == [20, 4, 6]
    assert wide.cfg.train.batch_size == 8 and wide.cfg.optim.lr == 5e-4 and deep.cfg.optim.lr == 1e-3
    assert (wide.lr, wide.warmup_steps, deep.lr, deep.warmup_steps) == (5e-4, 2, None, None)
    assert wide.cfg.optim.warmup_steps == 4  # the stage's warmup is a schedule matter, not its config's
    assert (wide.parallel.tp, wide.parallel.dp) == (2, 1) and (deep.parallel.tp, deep.parallel.dp) == (1, -1)
    assert wide.growth == cfg.stages[1].grow and first.growth is None
    assert (first.tflops_per_gpu, wide.tflops_per_gpu) == (None, 10.0)


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda d: d["stages"][2].pop("steps"), "stages[2] sets neither steps nor tokens; give one"),
        (lambda d: d["stages"][2]["grow"].update(ramp_steps=7),
         "stages[2].grow.ramp_steps (7) is longer than the stage (6 steps)"),
        (lambda d: d["stages"][2]["grow"].update(n_layers=1), "stages[2].grow.n_layers = 1 is smaller"),
    ],
)
def test_plans_that_cannot_run_are_refused(change, needle):
    data = _three()
    change(data)
    with pytest.raises(FlmError) as e:
        resolve_stages(config_from_dict(data))
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "lr_mode, table, warmup, needle",
    [
        # inherit: the first stage's warmup spans the whole plan (30 steps), a later stage's re-warms it
        ("inherit", None, 31, "optim.warmup_steps (31) is longer than the whole plan (30 steps"),
        ("inherit", 0, 31, "stages[0].warmup_steps (31) is longer than the whole plan"),
        ("inherit", 2, 7, "stages[2].warmup_steps (7) is longer than stage 3 (6 steps): the learning rate would never "
         "reach its peak; lower stages[2].warmup_steps to at most 6"),
        # restart: each stage warms up on its own, over optim.warmup_steps unless it sets its own
        ("restart", None, 7, "optim.warmup_steps (7) is longer than stage 3 (6 steps; lr_mode 'restart' warms up "
         "every stage): the learning rate would never reach its peak; lower optim.warmup_steps to at most 6 or set "
         "stages[2].warmup_steps"),
        ("restart", 1, 5, "stages[1].warmup_steps (5) is longer than stage 2 (4 steps)"),
    ],
)
def test_a_warmup_longer_than_its_steps_is_refused(lr_mode, table, warmup, needle):
    data = _three(lr_mode=lr_mode)
    (data["optim"] if table is None else data["stages"][table])["warmup_steps"] = warmup
    with pytest.raises(FlmError) as e:
        resolve_stages(config_from_dict(data))
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("lr_mode", ["inherit", "restart"])
def test_warmups_that_fit_are_accepted(lr_mode):
    data = _three(lr_mode=lr_mode)
    data["optim"]["warmup_steps"] = 30 if lr_mode == "inherit" else 4
    data["stages"][2]["warmup_steps"] = 6
    if lr_mode == "restart":
        data["stages"][0]["warmup_steps"] = 20
    else:  # a later stage's warmup moves to its lr_scale
        data["stages"][2]["lr_scale"] = 1.5
    assert [s.steps for s in resolve_stages(config_from_dict(data))] == [20, 4, 6]


def test_one_stage_warmup_is_checked_for_flm_train_too(tmp_path, capsys):
    with pytest.raises(FlmError, match=r"optim.warmup_steps \(11\) is longer than train.steps \(10 steps\)"):
        resolve_stages(config_from_dict(_cfg(optim={"warmup_steps": 11})))
    path = tmp_path / "one.toml"
    path.write_text("[train]\nsteps = 10\n[optim]\nwarmup_steps = 11\n")
    with pytest.raises(FlmError, match="lower optim.warmup_steps to at most 10"):
        load_config(path)
    assert load_config(path, ["train.steps=11"]).train.steps == 11
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "optim.warmup_steps (11) is longer than train.steps (10 steps)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_shipped_configs_plan():
    demo = resolve_stages(load_config(CONFIGS / "demo.toml"))
    assert [s.steps for s in demo] == [548, 41, 23]  # the best schedule of `flm plan search` (README)
    paper = resolve_stages(load_config(CONFIGS / "flm-101b.toml"))
    assert [s.tokens / 1e9 for s in paper] == [pytest.approx(t, abs=0.01) for t in (245.37, 39.64, 26.54)]
    assert [(s.parallel.tp, s.parallel.pp) for s in paper] == [(2, 1), (4, 2), (4, 4)]
    rich = resolve_stages(load_config(CONFIGS / "data-rich.toml"))  # growth_speedup's second scale
    assert sum(s.tokens for s in rich) >= 20 * rich[-1].model.num_params()  # 20 tokens/param from scratch
    assert [s.model.shape()["d_model"] for s in rich] == [64, 96, 96] and rich[-1].model.n_layers == 4
