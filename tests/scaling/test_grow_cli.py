"""flm plan fit and flm plan grow end to end: a fit file from run folders, a plan written as a config that
flm's loader resolves, JSON and plot output; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flm.cli import main
from flm.config import config_from_dict, load_config, save_config
from flm.flops import flops_per_token
from flm.scaling.loss_model import LossModel, load_fit, save_fit
from flm.scaling.predict import n_params
from flm.stages import resolve_stages
from tests.conftest import tiny_config_dict

TINY = LossModel(E=2.0, A=200.0, B=40.0, alpha=0.4, beta=0.3)


@pytest.fixture
def world(tmp_path, tiny_corpus, prepared_dir, monkeypatch):
    data = tiny_config_dict(tiny_corpus, prepared_dir)
    data["optim"] = {"warmup_steps": 2}
    cfg = config_from_dict(data)
    save_config(cfg, tmp_path / "tiny.toml")
    save_fit(TINY, tmp_path / "fit.json")
    monkeypatch.chdir(tmp_path)
    return cfg


def test_fit_from_runs(world, tmp_path, capsys) -> None:
    runs = []
    for width in (32, 48, 64):
        cfg = world.model_copy(deep=True)
        cfg.model = cfg.model.model_copy(update={"d_model": width, "n_heads": width // 16, "d_ff": 4 * width})
        run = tmp_path / f"w{width}"
        run.mkdir()
        save_config(cfg, run / "config.toml")
        per_step = cfg.train.batch_size * cfg.seq_len
        n = n_params(cfg.model)
        rows = [{"step": s, "tokens": s * per_step, "val_loss": float(TINY(n, s * per_step))} for s in range(4, 41, 4)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(str(run))
    assert main(["plan", "fit", *runs, "--out", "mine.json", "--bootstrap", "3", "--bump", "depth=0.01"]) == 0
    law = load_fit(tmp_path / "mine.json")
    assert law.bumps == {"depth": 0.01} and law.runs == 3 and len(law.samples) == 3
    for nn in (2e4, 1e5):
        for d in (4000.0, 20000.0):
            assert float(law(nn, d)) == pytest.approx(float(TINY(nn, d)), rel=0.01)
    assert "wrote mine.json" in capsys.readouterr().out


def test_grow_writes_a_config_flm_runs(world, tmp_path, capsys) -> None:
    per_step = world.train.batch_size * world.seq_len
    argv = ["plan", "grow", "tiny.toml", "--budget", "7.5e10", "--final", "d_model=64,d_ff=256,n_layers=4",
            "--fit", "fit.json", "--out", "plan.toml", "--plot", "plan.png"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    stages = resolve_stages(load_config(tmp_path / "plan.toml"))
    assert [s.steps for s in stages] == [s["steps"] for s in out["stages"]]
    assert stages[-1].model.shape()["d_model"] == 64 and stages[-1].model.n_layers == 4 and len(stages) >= 2
    assert out["reaches_final_shape"] and out["predicted_final_loss"] < out["same_shape_scratch_loss"]
    assert not out["smaller_start"] and load_config(tmp_path / "plan.toml").model == world.model
    assert out["best_scratch"]["loss"] <= out["best_scratch"]["width_loss"] + 1e-9
    assert np.isclose(sum(s.steps for s in stages[:1]) * per_step, out["stages"][0]["steps"] * per_step)
    assert (tmp_path / "plan.png").stat().st_size > 0
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "predicted final loss" in text and "best from scratch" in text and "wrote config plan.toml" in text


def test_grow_starts_smaller_unless_told_to_keep_the_start(world, tmp_path, capsys) -> None:
    cheap = LossModel(E=2.0, A=20.0, B=40.0, alpha=0.4, beta=0.3, bumps={"width": 0.2, "depth": 0.2})
    save_fit(cheap, tmp_path / "cheap.json")
    final = world.model.model_copy(update={"d_model": 64, "n_heads": 4, "d_ff": 256, "n_layers": 4})
    budget = 4000 * world.train.batch_size * world.seq_len * flops_per_token(final, world.seq_len)
    argv = ["plan", "grow", "tiny.toml", "--budget", f"{budget:.6g}", "--final", "d_model=64,d_ff=256,n_layers=4",
            "--fit", "cheap.json", "--stages", "3", "--out", "plan.toml"]
    assert main(argv) == 0
    assert "starts smaller than the config's model" in capsys.readouterr().out
    small = load_config(tmp_path / "plan.toml")
    assert small.model.d_model < world.model.d_model or small.model.n_layers < world.model.n_layers
    assert resolve_stages(small)[-1].model.shape() == final.shape()
    assert main([*argv, "--keep-start", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert not out["smaller_start"] and load_config(tmp_path / "plan.toml").model == world.model


@pytest.mark.parametrize("extra, words", [
    (["--budget", "1e3"], "is below one step of the start shape"),
    (["--budget", "1e12", "--final", "d_model=16"], "smaller than the current 32"),
    (["--budget", "1e12", "--fit", "nope.json"], "no such file"),
    (["--budget", "1e12", "--fit", "tiny.toml"], "not a JSON fit file"),
    (["--budget", "1e12", "--stages", "9"], "--stages 9: give 2 to 5"),
    (["--budget", "1e12", "--ramp-share", "2"], "--ramp-share 2.0: give a share"),
])
def test_grow_bad_input_is_one_line(world, tmp_path, capsys, extra, words) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["plan", "grow", "tiny.toml", "--final", "d_model=64", *extra, "--out", "plan.toml"]
                if "--final" not in extra else ["plan", "grow", "tiny.toml", *extra, "--out", "plan.toml"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
