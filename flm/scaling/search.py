"""μP hyperparameter search on a small proxy: grid or random search over (lr, init std, output multiplier),
as FLM-101B did on a width-256 proxy; the best point transfers to every width under μP.

Each point is one run of the normal trainer (``train_stage``) on the proxy config, into its own folder, so
an interrupted search resumes where it stopped and finished points are read, not retrained. A point whose
loss becomes non-finite counts as diverged (loss = inf).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomli_w

from flm.config import RunConfig, dump_toml
from flm.errors import FlmError
from flm.io import atomic_write
from flm.mup import with_width
from flm.scaling.predict import check_same_run, start_or_resume
from flm.train.loop import train_stage

# search key -> (config section, config key)
SEARCH_KEYS: dict[str, tuple[str, str]] = {
    "lr": ("optim", "lr"),
    "init_std": ("model", "init_std"),
    "output_mult": ("model", "output_mult"),
}


@dataclass(frozen=True)
class SearchPoint:
    lr: float
    init_std: float
    output_mult: float

    @property
    def tag(self) -> str:
        """A folder name for this point's run."""
        return f"lr{self.lr:.3g}_std{self.init_std:.3g}_om{self.output_mult:.3g}"


def grid_points(lrs: Sequence[float], init_stds: Sequence[float], output_mults: Sequence[float]) -> list[SearchPoint]:
    """Every combination, in a fixed order (lr fastest)."""
    for name, values in (("lr", lrs), ("init_std", init_stds), ("output_mult", output_mults)):
        if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
            raise FlmError(f"search values for {name} must be positive numbers (got {list(values)})")
    return [SearchPoint(lr, s, om) for om in output_mults for s in init_stds for lr in lrs]


def random_points(ranges: dict[str, tuple[float, float]], n: int, seed: int = 0) -> list[SearchPoint]:
    """``n`` points drawn log-uniformly within [lo, hi] for each of lr, init_std, output_mult."""
    if n <= 0:
        raise FlmError(f"--random {n}: the number of random points must be positive")
    rng = random.Random(seed)
    for key in SEARCH_KEYS:
        lo, hi = ranges[key]
        if not 0 < lo <= hi:
            raise FlmError(f"search range for {key} must satisfy 0 < low <= high (got {lo}..{hi})")
    return [
        SearchPoint(
            **{
                k: math.exp(rng.uniform(math.log(ranges[k][0]), math.log(ranges[k][1])))
                for k in ("lr", "init_std", "output_mult")
            }
        )
        for _ in range(n)
    ]


def default_grid(cfg: RunConfig) -> dict[str, list[float]]:
    """Around the config's values: lr x 2^-2..2^2, init std and output multiplier x 2^-1..2^1."""
    return {
        "lr": [cfg.optim.lr * 2.0**k for k in range(-2, 3)],
        "init_std": [cfg.model.init_std * 2.0**k for k in range(-1, 2)],
        "output_mult": [cfg.model.output_mult * 2.0**k for k in range(-1, 2)],
    }


def search_points(
    cfg: RunConfig,
    *,
    lr: Sequence[float] | None = None,
    init_std: Sequence[float] | None = None,
    output_mult: Sequence[float] | None = None,
    n_random: int | None = None,
    seed: int = 0,
) -> list[SearchPoint]:
    """The grid over the given values (each defaulting to ``default_grid(cfg)``'s), or, with ``n_random``,
    that many points drawn log-uniformly between each list's smallest and largest value."""
    grid = default_grid(cfg)
    values = {"lr": lr or grid["lr"], "init_std": init_std or grid["init_std"],
              "output_mult": output_mult or grid["output_mult"]}  # fmt: skip
    if n_random:
        return random_points({k: (min(v), max(v)) for k, v in values.items()}, n_random, seed)
    return grid_points(values["lr"], values["init_std"], values["output_mult"])


def proxy_config(cfg: RunConfig, width: int | None = None, steps: int | None = None) -> RunConfig:
    """The config's first-stage model at the proxy width (default: the μP base width), trained alone."""
    base = cfg.model.mup_base_width
    if not base:
        raise FlmError(
            "a μP search needs model.mup_base_width (FLM-101B used 256): the values found on the proxy "
            "transfer to other widths only under μP"
        )
    data = cfg.model_dump()
    data.update(model=with_width(cfg.model, width or base).model_dump(), stages=[])
    data["train"]["progress"] = False
    if steps is not None:
        data["train"]["steps"] = steps
    return RunConfig.model_validate(data)


def apply_point(cfg: RunConfig, point: SearchPoint) -> RunConfig:
    """``cfg`` with the point's values; optim.min_lr moves with optim.lr (same schedule shape)."""
    data = cfg.model_dump()
    data["optim"]["min_lr"] = cfg.optim.min_lr * point.lr / cfg.optim.lr
    for key, (section, field) in SEARCH_KEYS.items():
        data[section][field] = getattr(point, key)
    return RunConfig.model_validate(data)


@dataclass
class SearchResult:
    point: SearchPoint
    loss: float  # the ranking metric (inf when diverged)
    train_loss: float | None
    val_loss: float | None
    status: str  # "ok" or "diverged"
    run_dir: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["point"] = asdict(self.point)
        out["loss"] = None if math.isinf(self.loss) else self.loss
        return out


def _result_from_run(point: SearchPoint, run_dir: Path, metric: str) -> SearchResult | None:
    """The result of a finished run folder (or None when it has not finished)."""
    done = run_dir / "result.json"
    if not done.is_file():
        return None
    raw = json.loads(done.read_text())
    loss = raw.get(metric)
    status = raw["status"]
    value = float(loss) if status == "ok" and loss is not None else math.inf
    return SearchResult(point, value, raw.get("loss"), raw.get("val_loss"), status, str(run_dir), raw["seconds"])


def run_search(
    proxy: RunConfig,
    points: Iterable[SearchPoint],
    out_dir: Path,
    *,
    metric: str = "val_loss",
    train_fn: Callable[..., Any] | None = None,
    on_done: Callable[[SearchResult], None] | None = None,
) -> list[SearchResult]:
    """Train the proxy at every point (``train_stage`` by default) and rank by ``metric``
    ("val_loss" or "loss", the final train loss)."""
    if metric not in ("val_loss", "loss"):
        raise FlmError(f"search metric '{metric}': use 'val_loss' or 'loss'")
    train_fn = train_fn or train_stage
    results = []
    for point in points:
        run_dir = out_dir / "runs" / point.tag
        check_same_run(run_dir, apply_point(proxy, point))
        res = _result_from_run(point, run_dir, metric)
        if res is None:
            res = _train_point(proxy, point, run_dir, metric, train_fn)
        results.append(res)
        if on_done is not None:
            on_done(res)
    return results


def _train_point(
    proxy: RunConfig, point: SearchPoint, run_dir: Path, metric: str, train_fn: Callable[..., Any]
) -> SearchResult:
    cfg = apply_point(proxy, point)
    t0 = time.perf_counter()
    record: dict[str, Any]
    try:
        stage = start_or_resume(train_fn, cfg, run_dir)
        record = {"status": "ok", "loss": stage.train_loss, "val_loss": stage.val_loss}
        if not all(math.isfinite(v) for v in (stage.train_loss, stage.val_loss) if v is not None):
            record["status"] = "diverged"
    except FlmError as e:
        if "loss became" not in str(e):  # the trainer's divergence error; anything else is the user's
            raise
        record = {"status": "diverged", "loss": None, "val_loss": None, "error": str(e)}
    record["seconds"] = time.perf_counter() - t0
    record["point"] = asdict(point)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "result.json", json.dumps(record, indent=2))
    res = _result_from_run(point, run_dir, metric)
    assert res is not None
    return res


def best_result(results: Sequence[SearchResult]) -> SearchResult:
    ok = [r for r in results if math.isfinite(r.loss)]
    if not ok:
        raise FlmError(f"all {len(results)} search points diverged: lower the learning rates (--lr) or the init std")
    return min(ok, key=lambda r: r.loss)


def config_fragment(best: SearchResult, proxy: RunConfig, n_points: int, metric: str) -> str:
    """TOML to paste into (or merge with) a config: the chosen point and the base width it was tuned at."""
    fragment = {
        "model": {
            "mup_base_width": proxy.model.mup_base_width,
            "init_std": best.point.init_std,
            "output_mult": best.point.output_mult,
        },
        "optim": {"lr": best.point.lr, "min_lr": apply_point(proxy, best.point).optim.min_lr},
    }
    head = (
        f"# flm mup search: best of {n_points} points on a width-{proxy.model.d_model} proxy "
        f"(depth {proxy.model.n_layers}, {proxy.train.steps} steps): {metric} {best.loss:.4f}\n"
        f"# under μP these transfer to any width with model.mup_base_width = {proxy.model.mup_base_width}\n"
    )
    return head + tomli_w.dumps(fragment)


def save_search(
    results: Sequence[SearchResult], proxy: RunConfig, cfg: RunConfig, out_dir: Path, metric: str
) -> dict[str, Path]:
    """results.json, results.csv, best.toml (fragment) and tuned.toml (the whole config, tuned)."""
    best = best_result(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        k: out_dir / n
        for k, n in (
            ("json", "results.json"),
            ("csv", "results.csv"),
            ("fragment", "best.toml"),
            ("config", "tuned.toml"),
        )
    }
    summary = {
        "metric": metric,
        "proxy": {
            "d_model": proxy.model.d_model,
            "n_layers": proxy.model.n_layers,
            "steps": proxy.train.steps,
        },
        "best": best.to_json(),
        "results": [r.to_json() for r in results],
    }
    atomic_write(paths["json"], json.dumps(summary, indent=2))
    lines = ["lr,init_std,output_mult,status,loss,val_loss,seconds"]
    for r in results:
        p = r.point
        lines.append(
            f"{p.lr:.6g},{p.init_std:.6g},{p.output_mult:.6g},{r.status},{r.train_loss or ''},"
            f"{r.val_loss or ''},{r.seconds:.1f}"
        )
    atomic_write(paths["csv"], "\n".join(lines) + "\n")
    atomic_write(paths["fragment"], config_fragment(best, proxy, len(results), metric))
    tuned = apply_point(cfg, best.point)
    atomic_write(paths["config"], dump_toml(tuned))
    return paths
