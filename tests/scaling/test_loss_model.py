"""The loss model L(N, D) = E + A/N^α + B/D^β: the Huber fit recovers a known law from noisy synthetic curves,
its bootstrap covers the truth, points come from runs' metrics.jsonl, and bad input is one FlmError line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flm.config import config_from_dict, save_config
from flm.errors import FlmError
from flm.scaling.loss_model import LossModel, fit_loss_model, load_fit, points_from_runs, save_fit
from flm.scaling.predict import n_params
from tests.conftest import tiny_config_dict

TRUE = LossModel(E=1.8, A=300.0, B=900.0, alpha=0.35, beta=0.3)


def synthetic(noise: float, seed: int = 1) -> tuple[list[float], list[float], list[float]]:
    """Curves of 5 sizes, 12 evaluations each, loss multiplied by (1 + noise·ε)."""
    rng = np.random.default_rng(seed)
    ns, ds, ls = [], [], []
    for n in (2e5, 5e5, 1e6, 3e6, 1e7):
        for d in np.geomspace(2e6, 2e8, 12):
            ns.append(n)
            ds.append(float(d))
            ls.append(float(TRUE(n, d)) * (1 + noise * rng.standard_normal()))
    return ns, ds, ls


def test_fit_recovers_a_known_law_from_noisy_curves() -> None:
    fit = fit_loss_model(*synthetic(noise=0.003), bootstrap=6)
    # tolerance: 0.3% noise on 60 points; exponents within 0.02, E within 3%, A and B (which trade off with
    # the exponents) within 20%, and the predicted loss anywhere on the grid within 0.5%
    assert fit.alpha == pytest.approx(TRUE.alpha, abs=0.02) and fit.beta == pytest.approx(TRUE.beta, abs=0.02)
    assert fit.E == pytest.approx(TRUE.E, rel=0.03)
    assert fit.A == pytest.approx(TRUE.A, rel=0.2) and fit.B == pytest.approx(TRUE.B, rel=0.2)
    n, d = np.meshgrid([2e5, 1e7], [2e6, 2e8])
    assert np.allclose(fit(n, d), TRUE(n, d), rtol=5e-3)
    std = fit.std()
    assert set(std) == {"E", "A", "B", "alpha", "beta"} and 0 < std["alpha"] < 0.05
    assert fit.loss_std(1e6, 1e7) > 0 and fit.runs == 5 and fit.points == 60


def test_fit_without_noise_is_exact() -> None:
    fit = fit_loss_model(*synthetic(noise=0.0), bootstrap=0)
    for k in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, k) == pytest.approx(getattr(TRUE, k), rel=2e-3), k


@pytest.mark.parametrize("n, d, loss, words", [
    ([1e6] * 4, [1e6, 2e6, 3e6, 4e6], [3, 2.9, 2.8, 2.7], "at least 5 points"),
    ([1e6] * 6, [1e6 * i for i in range(1, 7)], [3, 2.9, 2.8, 2.7, 2.6, 2.5], "at least 2 sizes"),
    ([1e6, 2e6] * 3, [1e6 * i for i in range(1, 7)], [3, 2.9, float("nan"), 2.7, 2.6, 2.5], "finite and > 0"),
    ([1e6, 2e6] * 3, [0, 1e6, 2e6, 3e6, 4e6, 5e6], [3, 2.9, 2.8, 2.7, 2.6, 2.5], "finite and > 0"),
])
def test_bad_points_are_one_line(n, d, loss, words) -> None:
    with pytest.raises(FlmError, match=words) as e:
        fit_loss_model(n, d, loss)
    assert "\n" not in str(e.value)


def test_points_from_runs_read_metrics(tmp_path, tiny_corpus, prepared_dir) -> None:
    runs = []
    for width in (32, 64):
        cfg = config_from_dict(tiny_config_dict(tiny_corpus, prepared_dir) | {"name": f"w{width}"})
        cfg.model.d_model = width
        run = tmp_path / f"w{width}"
        run.mkdir()
        save_config(cfg, run / "config.toml")
        rows = [{"step": s, "loss": 5.0, **({"val_loss": 4.0 - s / 100} if s % 2 == 0 else {})} for s in range(9)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append((run, cfg))
    n, d, loss, names = points_from_runs([r for r, _ in runs], skip=0.5)
    per_step = runs[0][1].train.batch_size * runs[0][1].seq_len
    assert d[:3] == [4 * per_step, 6 * per_step, 8 * per_step] and loss[:3] == [3.96, 3.94, 3.92]
    assert n[0] == n_params(runs[0][1].model) and n[3] == n_params(runs[1][1].model) and len(set(names)) == 2
    with pytest.raises(FlmError, match="not a run folder"):
        points_from_runs([tmp_path])


def test_fit_file_round_trip_and_bad_files(tmp_path) -> None:
    fit = fit_loss_model(*synthetic(noise=0.002), bootstrap=3)
    fit.bumps = {"width": 0.01}
    save_fit(fit, tmp_path / "fit.json")
    back = load_fit(tmp_path / "fit.json")
    assert back.alpha == fit.alpha and back.bumps == {"width": 0.01} and back.samples == fit.samples
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "other.json").write_text('{"a": 1}')
    (tmp_path / "neg.json").write_text(json.dumps(fit.to_json() | {"E": -1}))
    for name, words in (("missing.json", "no such file"), ("bad.json", "not a JSON fit file"),
                        ("other.json", "not a loss-model fit"), ("neg.json", "finite and > 0")):
        with pytest.raises(FlmError, match=words) as e:
            load_fit(tmp_path / name)
        assert "\n" not in str(e.value)
