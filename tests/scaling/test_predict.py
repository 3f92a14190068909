"""μScaling loss prediction: the power-law fit, reading runs, training a width series, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flm.checkpoint import read_config
from flm.cli import main
from flm.config import RunConfig, config_from_dict, save_config
from flm.errors import FlmError
from flm.scaling import predict as P
from flm.train.metrics import read_metrics


@pytest.mark.parametrize(
    "a,b,c",
    [(2.469, -0.423, 2.923), (40.0, -0.08, 1.0), (0.3, -1.2, 5.0)],  # μScaling's own fit; flat; steep
)
def test_fit_recovers_a_power_law(a, b, c):
    n = np.array([8.53, 20.0, 41.0, 77.0, 154.0]) * 1e6
    fit = P.fit_power_law(n, a * (n / 1e6) ** b + c)
    assert (fit.a, fit.b, fit.c) == pytest.approx((a, b, c), rel=1e-4)
    assert fit(1446.72e6) == pytest.approx(a * 1446.72**b + c, rel=1e-6)


def test_fit_with_noise_predicts_within_noise():
    rng = np.random.default_rng(0)
    n = np.array([1e5, 2e5, 4e5, 8e5, 1.6e6])
    clean = 2.0 * (n / 1e6) ** -0.35 + 3.0
    fit = P.fit_power_law(n, clean * (1 + 0.001 * rng.standard_normal(len(n))))
    target = 2.0 * 25.6**-0.35 + 3.0
    assert abs(fit(25.6e6) / target - 1) < 0.01
    assert fit.rmse < 0.02


def test_fit_warns_when_it_cannot_be_trusted():
    n = np.array([1e5, 2e5, 4e5, 8e5])
    good = P.fit_power_law(n, 2.0 * (n / 1e6) ** -0.35 + 3.0)
    assert good.warnings == []
    three = P.fit_power_law(n[:3], 2.0 * (n[:3] / 1e6) ** -0.35 + 3.0)
    assert any("3 runs" in w for w in three.warnings)
    log_linear = P.fit_power_law(n, 8.3 - 0.01 * np.log(n))  # no curvature: b runs to the edge of its range
    assert any("edge of its range" in w for w in log_linear.warnings)


def test_fit_refuses_too_few_or_rising_losses():
    with pytest.raises(FlmError, match="at least 3"):
        P.fit_power_law([1e6, 2e6], [3.0, 2.9])
    with pytest.raises(FlmError, match="do not decrease"):
        P.fit_power_law([1e6, 2e6, 4e6, 8e6], [3.0, 3.1, 3.2, 3.3])
    with pytest.raises(FlmError, match="same parameter count"):
        P.fit_power_law([1e6, 1e6, 4e6], [3.0, 2.9, 2.8])


def test_loss_at_step_reads_the_step_or_a_window():
    recs = [{"step": s, "loss": 10.0 - s} for s in range(1, 11)] + [{"step": 10, "val_loss": 4.5}]
    assert P.loss_at_step(recs, 10, "val_loss") == 4.5
    assert P.loss_at_step(recs, 10, "loss", window=4) == pytest.approx(np.mean([3, 2, 1, 0]))
    with pytest.raises(FlmError, match="no 'val_loss' logged at step 8"):
        P.loss_at_step(recs, 8, "val_loss")


def test_width_run_config_scales_only_the_width():
    cfg = config_from_dict(
        {
            "model": {"d_model": 64, "n_heads": 4, "mup_base_width": 64, "init_std": 0.016},
            "stages": [{"steps": 5}, {"steps": 5, "grow": {"d_model": 128}}],
        }
    )
    w = P.width_run_config(cfg, 256)
    assert (w.model.d_model, w.model.n_heads, w.model.head_dim, w.model.d_ff) == (256, 16, 16, 1024)
    assert w.model.mup_base_width == 64 and w.model.init_std == 0.016 and w.stages == []
    assert w.optim == cfg.optim and w.train.steps == cfg.train.steps
    sp = config_from_dict({"model": {"d_model": 64, "n_heads": 4}})
    with pytest.raises(FlmError, match="mup_base_width"):
        P.width_run_config(sp, 128)


def _fake_run(folder: Path, width: int, val_loss: float, step: int = 100) -> Path:
    """A finished run folder as `flm train` leaves it (config.toml, metrics.jsonl)."""
    folder.mkdir(parents=True)
    cfg = config_from_dict({"model": {"d_model": width, "n_heads": width // 16, "mup_base_width": 32}})
    save_config(cfg, folder / "config.toml")
    lines = [
        {"step": step // 2, "loss": val_loss + 1},
        {"step": step, "loss": val_loss + 0.1, "val_loss": val_loss},
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder



def test_runs_are_keyed_by_width_and_split_into_fitted_and_predicted(tmp_path):
    runs = [_fake_run(tmp_path / f"r{w}", w, 3.0) for w in (64, 32, 48)]
    by_width, fit, template = P.runs_by_width(runs, [])
    assert by_width == {64: runs[0], 32: runs[1], 48: runs[2]}
    assert sorted(fit) == [32, 48] and template.d_model == 64  # default target: the widest run
    assert sorted(P.runs_by_width(runs, [32])[1]) == [48, 64]
    with pytest.raises(FlmError, match=r"--targets \[96\]: no run among --runs"):
        P.runs_by_width(runs, [96])
    with pytest.raises(FlmError, match="not a run folder"):
        P.runs_by_width([tmp_path], [])
    assert P.split_series([64, 32], [128]) == ([32, 64], [32, 64, 128])
    with pytest.raises(FlmError, match=r"widths \[64\] are in both --widths and --targets"):
        P.split_series([32, 64], [64])
    assert P.series_dirs(tmp_path, [32, 64]) == {32: tmp_path / "w32", 64: tmp_path / "w64"}

def test_predict_cli_reads_finished_runs(tmp_path, capsys):
    widths = [32, 48, 64, 96, 384]
    model = lambda w: RunConfig(model={"d_model": w, "n_heads": w // 16}).model  # noqa: E731
    law = lambda w: 1.5 * (model(w).num_params(embeddings=False) / 1e6) ** -0.3 + 2.0  # noqa: E731
    runs = [_fake_run(tmp_path / f"w{w}", w, law(w)) for w in widths]
    out = tmp_path / "pred"
    argv = ["predict", "--runs", *map(str, runs), "--targets", "384", "--extrapolate", "1024,2048"]
    rc = main([*argv, "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "prediction.json").read_text())
    assert (out / "prediction.png").stat().st_size > 10_000
    assert result["step"] == 100 and result["metric"] == "val_loss"
    roles = {p["width"]: p["role"] for p in result["points"]}
    assert roles == {32: "fit", 48: "fit", 64: "fit", 96: "fit", 384: "predict"}
    held = [p for p in result["points"] if p["role"] == "predict"][0]
    assert abs(held["rel_error"]) < 1e-4
    assert result["fit"]["b"] == pytest.approx(-0.3, rel=1e-3)
    assert [e["width"] for e in result["extrapolated"]] == [1024, 2048]
    assert result["extrapolated"][0]["predicted"] == pytest.approx(law(1024), rel=1e-4)
    assert "extrapolate" in capsys.readouterr().out


def test_predict_cli_errors_are_one_line(tmp_path, capsys):
    run = _fake_run(tmp_path / "w32", 32, 3.0)
    assert main(["predict", "--runs", str(run), str(run)]) == 2
    assert "both have d_model 32" in capsys.readouterr().err
    assert main(["predict"]) == 2
    assert "give a CONFIG" in capsys.readouterr().err


def test_train_series_uses_the_trainer_and_reuses_finished_runs(tiny_cfg, tmp_path):
    data = tiny_cfg(steps=4, eval_every=0)
    data["model"]["mup_base_width"] = 32
    cfg = config_from_dict(data)
    out = tmp_path / "series"
    runs = P.train_series(cfg, [32, 48, 64], out)
    for width, run in runs.items():
        recs = read_metrics(run / "metrics.jsonl")
        assert recs[-1]["step"] == 4 and "val_loss" in recs[-1] and recs[-1]["d_model"] == width

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was retrained")

    assert P.train_series(cfg, [32, 48, 64], out, train_fn=must_not_train) == runs
    longer = config_from_dict({**data, "train": {**data["train"], "steps": 5}})
    with pytest.raises(FlmError, match="another config"):
        P.train_series(longer, [32], out, train_fn=must_not_train)
    for width, run in runs.items():
        model, step, loss = P.read_run(run, None, "val_loss", 1)
        assert model == P.width_run_config(cfg, width).model and step == 4
        assert loss == read_metrics(run / "metrics.jsonl")[-1]["val_loss"]


def test_trend_over_late_steps_predicts_better_than_one_step():
    """Synthetic runs: L(N, t) = 2·(N/1e6)^-0.35 + 3 + 5·t^-0.5 with 0.01 of noise on every evaluation (every
    50 steps to 800). Fitting 4 widths and predicting a 8x wider one at step 800, the trend over the last 600
    steps (12 evaluations) errs less than the loss at step 800 alone, and less than the window's mean (which
    sits above the end of the falling curve)."""
    rng = np.random.default_rng(0)
    widths = np.array([1e5, 2e5, 4e5, 8e5])
    target, steps = 6.4e6, np.arange(50, 801, 50)

    def curve(n):
        return 2.0 * (n / 1e6) ** -0.35 + 3.0 + 5.0 * steps**-0.5

    truth = curve(target)[-1]
    errors = {"one step": [], "mean": [], "trend": []}
    for _ in range(60):
        noisy = [curve(n) + 0.01 * rng.standard_normal(len(steps)) for n in widths]
        runs = [[{"step": int(t), "val_loss": float(v)} for t, v in zip(steps, c)] for c in noisy]
        for name, window, smooth in (("one step", 1, "mean"), ("mean", 600, "mean"), ("trend", 600, "trend")):
            losses = [P.loss_at_step(r, 800, "val_loss", window, smooth) for r in runs]
            errors[name].append(abs(P.fit_power_law(widths, losses)(target) / truth - 1))
    mae = {k: float(np.mean(v)) for k, v in errors.items()}
    # mean |error| at rng seeds 0, 1, 2: one step 0.84 / 1.12 / 0.90%, window mean 1.26 / 1.16 / 1.22%,
    # trend 0.50 / 0.47 / 0.52% (seed 0 asserted here; default_rng(1) or (2) above gives the others)
    assert mae["trend"] < 0.7 * mae["one step"], mae
    assert mae["trend"] < mae["mean"], mae


def test_trend_needs_three_steps():
    recs = [{"step": 100, "val_loss": 3.0}, {"step": 200, "val_loss": 2.9}]
    with pytest.raises(FlmError, match="3\\+ distinct steps"):
        P.loss_at_step(recs, 200, "val_loss", 200, "trend")
    with pytest.raises(FlmError, match="smoothing 'median'"):
        P.loss_at_step(recs, 200, "val_loss", 200, "median")


def test_several_runs_of_a_width_count_with_their_mean_loss(tmp_path):
    law = {32: 4.0, 48: 3.8, 64: 3.7, 128: 3.55}
    runs = {w: [_fake_run(tmp_path / f"w{w}-a", w, loss - 0.05), _fake_run(tmp_path / f"w{w}-b", w, loss + 0.05)]
            for w, loss in law.items() if w != 128}
    runs[128] = _fake_run(tmp_path / "w128", 128, law[128])
    pred = P.predict_from_runs(runs, [32, 48, 64])
    by_width = {p.width: p for p in pred.points}
    for w in (32, 48, 64):
        assert by_width[w].loss == pytest.approx(law[w]) and by_width[w].runs == 2
    assert by_width[128].runs == 1 and by_width[128].run_dir == str(tmp_path / "w128")
    one = P.predict_from_runs({w: r[0] if isinstance(r, list) else r for w, r in runs.items()}, [32, 48, 64])
    assert [p.loss for p in one.points][:3] == pytest.approx([law[w] - 0.05 for w in (32, 48, 64)])


def test_train_seeds_trains_each_width_at_each_seed_and_reuses_them(tiny_cfg, tmp_path):
    data = tiny_cfg(steps=3, eval_every=0)
    data["model"]["mup_base_width"] = 32
    cfg = config_from_dict(data)
    out = tmp_path / "series"
    runs = P.train_seeds(cfg, [32, 48], out, 2)
    assert runs == {w: [out / f"w{w}", out / f"seed{cfg.train.seed + 1}" / f"w{w}"] for w in (32, 48)}
    for first, second in runs.values():
        assert read_config(first / "config.toml").train.seed == cfg.train.seed
        assert read_config(second / "config.toml").train.seed == cfg.train.seed + 1
        losses = [read_metrics(d / "metrics.jsonl")[-1]["val_loss"] for d in (first, second)]
        assert losses[0] != losses[1]  # another init and data order

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was retrained")

    assert P.train_seeds(cfg, [32, 48], out, 2, train_fn=must_not_train) == runs


def test_predict_cli_fits_the_mean_of_the_seeds(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    save_config(config_from_dict({"model": {"d_model": 64, "n_heads": 4, "mup_base_width": 32}}), cfg)
    out = tmp_path / "series"
    seed = config_from_dict({}).train.seed
    for w, loss in {32: 4.0, 48: 3.8, 64: 3.7}.items():
        _fake_run(out / f"w{w}", w, loss - 0.05)
        _fake_run(out / f"seed{seed + 1}" / f"w{w}", w, loss + 0.05)
    _fake_run(out / "w128", 128, 3.55)
    assert main(["predict", str(cfg), "--widths", "32,48,64", "--targets", "128", "--seeds", "2", "--no-train",
                 "--out", str(out)]) == 0
    assert "32 (x2 seeds)" in capsys.readouterr().out
    points = json.loads((out / "prediction.json").read_text())["points"]
    assert [p["loss"] for p in points] == pytest.approx([4.0, 3.8, 3.7, 3.55])
    assert main(["predict", str(cfg), "--widths", "32,48,64", "--seeds", "0", "--no-train"]) == 2
    assert main(["predict", "--runs", str(out / "w32"), str(out / "w48"), "--seeds", "2"]) == 2
    assert "--seeds trains" in capsys.readouterr().err
