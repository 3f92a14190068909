"""μP proxy search: point generation, the proxy config, runs through the trainer, divergence, outputs, CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from flm.cli import main
from flm.config import config_from_dict, dump_toml, load_config
from flm.errors import FlmError
from flm.scaling import search as S

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_grid_covers_every_combination():
    pts = S.grid_points([1e-3, 2e-3], [0.01, 0.02, 0.04], [1.0, 2.0])
    assert len(pts) == 12 and len(set(pts)) == 12
    assert pts[0] == S.SearchPoint(1e-3, 0.01, 1.0) and pts[1] == S.SearchPoint(2e-3, 0.01, 1.0)
    assert len({p.tag for p in pts}) == 12
    with pytest.raises(FlmError, match="positive"):
        S.grid_points([1e-3, -1.0], [0.02], [1.0])


def test_random_points_are_log_uniform_in_range_and_seeded():
    ranges = {"lr": (1e-4, 1e-2), "init_std": (0.01, 0.04), "output_mult": (0.5, 4.0)}
    pts = S.random_points(ranges, 400, seed=3)
    assert pts == S.random_points(ranges, 400, seed=3) != S.random_points(ranges, 400, seed=4)
    for key, (lo, hi) in ranges.items():
        vals = [getattr(p, key) for p in pts]
        assert lo <= min(vals) and max(vals) <= hi
    below = sum(p.lr < 1e-3 for p in pts) / len(pts)  # log-uniform: half the mass below the log-midpoint
    assert 0.4 < below < 0.6



def test_search_points_default_to_the_grid_around_the_config():
    cfg = config_from_dict({"optim": {"lr": 1e-3}, "model": {"init_std": 0.02, "output_mult": 1.0}})
    assert S.search_points(cfg) == S.grid_points(*S.default_grid(cfg).values())
    pts = S.search_points(cfg, lr=[1e-3, 4e-3], init_std=[0.02])
    assert len(pts) == 2 * 1 * 3 and {p.init_std for p in pts} == {0.02}
    drawn = S.search_points(cfg, lr=[1e-4, 1e-2], n_random=50, seed=1)
    assert len(drawn) == 50 and drawn == S.search_points(cfg, lr=[1e-4, 1e-2], n_random=50, seed=1)
    assert all(1e-4 <= p.lr <= 1e-2 and 0.5 <= p.output_mult <= 2.0 for p in drawn)

def test_proxy_is_the_base_width_model_trained_alone():
    cfg = config_from_dict(
        {
            "model": {"d_model": 1024, "n_heads": 8, "mup_base_width": 256},
            "stages": [{"steps": 5}, {"steps": 5, "grow": {"d_model": 2048}}],
        }
    )
    proxy = S.proxy_config(cfg, steps=7)
    assert (proxy.model.d_model, proxy.model.n_heads, proxy.model.head_dim) == (256, 2, 128)
    assert proxy.model.width_mult == 1 and proxy.stages == [] and proxy.train.steps == 7
    assert S.proxy_config(cfg, width=512).model.d_model == 512
    tuned = S.apply_point(cfg, S.SearchPoint(4e-4, 0.016, 2.0))
    assert (tuned.optim.lr, tuned.model.init_std, tuned.model.output_mult) == (4e-4, 0.016, 2.0)
    assert tuned.optim.min_lr == pytest.approx(cfg.optim.min_lr * 4e-4 / cfg.optim.lr)
    with pytest.raises(FlmError, match="mup_base_width"):
        S.proxy_config(config_from_dict({}))


def _stage(loss: float, val: float | None = None):
    return SimpleNamespace(train_loss=loss, val_loss=loss if val is None else val)


def test_diverged_points_are_recorded_and_skipped(tmp_path):
    proxy = S.proxy_config(config_from_dict({"model": {"d_model": 64, "n_heads": 4, "mup_base_width": 64}}))
    pts = S.grid_points([1e-3, 1e-2, 1e-1], [0.02], [1.0])

    def fake_train(cfg, out_dir, resume=False):
        if cfg.optim.lr >= 0.1:
            raise FlmError("loss became nan at step 3; lower optim.lr or raise optim.warmup_steps")
        return _stage(5.0 - 100 * cfg.optim.lr)

    results = S.run_search(proxy, pts, tmp_path, train_fn=fake_train)
    assert [r.status for r in results] == ["ok", "ok", "diverged"] and math.isinf(results[2].loss)
    assert S.best_result(results).point.lr == 1e-2
    paths = S.save_search(results, proxy, proxy, tmp_path, "val_loss")
    summary = json.loads(paths["json"].read_text())
    assert summary["best"]["point"]["lr"] == 1e-2 and summary["results"][2]["loss"] is None
    assert paths["csv"].read_text().count("\n") == 4

    def boom(cfg, out_dir, resume=False):
        raise FlmError("loss became inf at step 1")

    with pytest.raises(FlmError, match="all 1 search points diverged"):
        S.best_result(S.run_search(proxy, S.grid_points([5.0], [0.02], [1.0]), tmp_path / "b", train_fn=boom))


def test_search_cli_trains_with_the_trainer_and_writes_a_fragment(tiny_cfg, tmp_path, capsys):
    data = tiny_cfg(steps=4, eval_every=0)
    data["model"]["mup_base_width"] = 32
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(dump_toml(config_from_dict(data)))
    out = tmp_path / "search"
    argv = ["mup", "search", str(cfg_path), "--lr", "1e-3,1e-2", "--init-std", "0.02", "--output-mult", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert len(summary["results"]) == 2 and all(r["status"] == "ok" for r in summary["results"])
    losses = {r["point"]["lr"]: r["val_loss"] for r in summary["results"]}
    best_lr = min(losses, key=losses.get)
    fragment = tomllib.loads((out / "best.toml").read_text())
    assert fragment == {
        "model": {"mup_base_width": 32, "init_std": 0.02, "output_mult": 1.0},
        "optim": {"lr": best_lr, "min_lr": pytest.approx(best_lr / 10)},  # tiny_cfg: min_lr = lr / 10
    }
    tuned = load_config(out / "tuned.toml")
    assert tuned.optim.lr == best_lr and tuned.model == config_from_dict(data).model
    for r in summary["results"]:  # each point is a normal run folder
        assert (Path(r["run_dir"]) / "metrics.jsonl").is_file()
    assert "best.toml" in capsys.readouterr().out

    # a second call reads the finished points instead of training them again
    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished point was retrained")

    proxy = S.proxy_config(config_from_dict(data))
    again = S.run_search(proxy, S.grid_points([1e-3, 1e-2], [0.02], [1.0]), out, train_fn=must_not_train)
    assert {r.point.lr: r.val_loss for r in again} == losses
    with pytest.raises(FlmError, match="another config"):  # finished runs of another config are not reused
        S.run_search(
            S.proxy_config(config_from_dict(data), steps=5), S.grid_points([1e-3], [0.02], [1.0]), out
        )


def test_search_cli_needs_mup(tmp_path, capsys):
    cfg_path = tmp_path / "sp.toml"
    cfg_path.write_text(dump_toml(config_from_dict({})))
    assert main(["mup", "search", str(cfg_path)]) == 2
    assert "mup_base_width" in capsys.readouterr().err
