"""μScaling loss prediction: train a series of μP widths with the same hyperparameters, fit
L(N) = a·N^b + c to the losses of the smaller ones at one fixed step, and predict the larger ones.

Method of Yao & Wang (arXiv 2304.06875, cofe-ai/Mu-scaling), used for FLM-101B. Under μP the same
hyperparameters are (near) optimal at every width, so the loss at a fixed step is a smooth function of the
model size alone. N is the non-embedding parameter count by default (Kaplan et al.), or the total.

The fit profiles out the linear parameters: for each exponent b on a grid, (a, c) is a linear least-squares
problem; the best b seeds scipy's ``curve_fit`` on all three. This finds the global optimum where a plain
``curve_fit`` from μScaling's p0 = [1, -1, 3] can stall, and needs no guess of the loss scale.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import curve_fit

from flm.checkpoint import latest_checkpoint, read_config
from flm.config import ModelConfig, RunConfig
from flm.errors import FlmError
from flm.io import atomic_write
from flm.mup import with_width
from flm.train.loop import train_stage
from flm.train.metrics import read_metrics

N_UNIT = 1e6  # the fit works on N in millions (as μScaling's data), which keeps a near 1


def power_law(n: np.ndarray | float, a: float, b: float, c: float) -> np.ndarray | float:
    return a * np.power(n, b) + c


@dataclass
class PowerLawFit:
    """L(N) = a·(N / 1e6)^b + c."""

    a: float
    b: float
    c: float
    rmse: float
    warnings: list[str] = field(default_factory=list)

    def __call__(self, n: float | np.ndarray) -> Any:
        return power_law(np.asarray(n, dtype=np.float64) / N_UNIT, self.a, self.b, self.c)


def fit_power_law(n_params: Sequence[float], losses: Sequence[float]) -> PowerLawFit:
    """Least-squares fit of L = a·(N/1e6)^b + c with a > 0, b < 0 (loss falls with size) and c >= 0."""
    x = np.asarray(n_params, dtype=np.float64) / N_UNIT
    y = np.asarray(losses, dtype=np.float64)
    if len(x) < 3:
        raise FlmError(f"a power law a·N^b + c has 3 parameters: fit it on at least 3 models (got {len(x)})")
    if len(set(x.tolist())) < len(x):
        raise FlmError("two runs of the fit have the same parameter count: give distinct widths")
    if not np.all(np.isfinite(y)):
        raise FlmError(f"non-finite loss among the fitted runs: {y.tolist()}")

    def sse(p: np.ndarray) -> float:
        return float(np.sum((power_law(x, *p) - y) ** 2))

    best: np.ndarray | None = None
    for b in -np.geomspace(1e-3, 3.0, 400):
        xb = np.power(x, b)
        (a, c), *_ = np.linalg.lstsq(np.stack([xb, np.ones_like(x)], axis=1), y, rcond=None)
        if c < 0:  # the irreducible loss is not negative: refit a with c = 0
            a, c = float(xb @ y / (xb @ xb)), 0.0
        if a > 0 and (best is None or sse(np.array([a, b, c])) < sse(best)):
            best = np.array([a, b, c])
    if best is None:  # loss does not fall with size: no decreasing power law fits
        raise FlmError(
            f"the losses {np.round(y, 4).tolist()} do not decrease with model size; a power law cannot be "
            "fitted (train longer, or check that the runs share the same hyperparameters and data)"
        )
    try:
        with warnings.catch_warnings():  # no covariance with 3 points: irrelevant, only popt is used
            warnings.simplefilter("ignore")
            popt, _ = curve_fit(
                power_law, x, y, p0=best, bounds=([0.0, -5.0, 0.0], [np.inf, 0.0, np.inf]), max_nfev=20000
            )
        if popt[0] > 0 and popt[1] < 0 and sse(popt) <= sse(best):
            best = popt
    except (RuntimeError, ValueError):  # the profiled optimum stands
        pass
    a, b, c = (float(v) for v in best)
    return PowerLawFit(a, b, c, rmse=math.sqrt(sse(best) / len(x)), warnings=_fit_warnings(len(x), b))


def _fit_warnings(points: int, b: float) -> list[str]:
    """What makes a fit less trustworthy than its rmse suggests."""
    out = []
    if points == 3:
        out.append("3 runs for 3 parameters: the curve passes through them, so rmse = 0 says nothing; fit 4+")
    if b > -1.5e-3 or b < -4.9:
        out.append(
            f"exponent b = {b:.3g} sits at the edge of its range: the losses barely curve, so c (the irreducible "
            "loss) and extrapolations are unreliable; train longer or widen the range of widths"
        )
    return out


# ----- runs of a width series -----------------------------------------------------------------------


def n_params(model: ModelConfig, count: str = "non-embedding") -> int:
    if count not in ("non-embedding", "total"):
        raise FlmError(f"parameter count '{count}': use 'non-embedding' or 'total'")
    return model.num_params(embeddings=count == "total")


def width_run_config(cfg: RunConfig, width: int) -> RunConfig:
    """The config's first-stage model at d_model = ``width`` (μP, same hyperparameters), trained alone."""
    if not cfg.model.mup_base_width:
        raise FlmError(
            "loss prediction needs μP (the same hyperparameters must suit every width): set "
            "model.mup_base_width, e.g. to the width the hyperparameters were tuned at"
        )
    data = cfg.model_dump()
    data.update(name=f"{cfg.name}-w{width}", model=with_width(cfg.model, width).model_dump(), stages=[])
    data["train"]["progress"] = False
    return RunConfig.model_validate(data)


SMOOTHING = ("mean", "trend")


def loss_at_step(
    records: list[dict[str, Any]], step: int, metric: str = "val_loss", window: int = 1, smooth: str = "mean"
) -> float:
    """``metric`` at ``step`` from the logged records with step in (step - window, step]: their mean, or
    (``smooth="trend"``) the least-squares line of the loss against log(step) through them, read at ``step``.

    Why the trend: one evaluation carries the noise of its batches and of the run's last updates (the seed),
    and the mean of a window of a falling curve sits above its end by the same amount at every width only
    when the curves fall alike. The line keeps the end of the curve and averages the noise over the window
    (at k evenly spread points its value at the end has about 4/k of one point's variance)."""
    hits = [(r["step"], r[metric]) for r in records if metric in r and step - window < r["step"] <= step]
    if not hits:
        logged = sorted({r["step"] for r in records if metric in r})
        raise FlmError(
            f"no '{metric}' logged at step {step} (logged at steps {logged[-5:] or 'none'}); pick --step "
            "from those, widen --window, or set train.eval_every so that it divides the step"
        )
    if smooth not in SMOOTHING:
        raise FlmError(f"smoothing '{smooth}': use one of {', '.join(SMOOTHING)}")
    steps, losses = np.array(hits, dtype=np.float64).T
    if smooth == "mean":
        return float(np.mean(losses))
    if len(set(steps.tolist())) < 3 or steps.min() <= 0:
        raise FlmError(
            f"a trend of '{metric}' at step {step} needs evaluations at 3+ distinct steps > 0 in the window "
            f"(found steps {sorted(set(steps.astype(int).tolist()))}); widen --window or log more often"
        )
    slope, intercept = np.polyfit(np.log(steps), losses, 1)
    return float(intercept + slope * math.log(step))


@dataclass
class RunPoint:
    width: int
    n_params: int
    loss: float
    role: str  # "fit" or "predict"
    run_dir: str  # the first of its runs
    predicted: float | None = None
    runs: int = 1  # runs (seeds) averaged into ``loss``

    @property
    def rel_error(self) -> float | None:
        return None if self.predicted is None else (self.predicted - self.loss) / self.loss


@dataclass
class Prediction:
    fit: PowerLawFit
    points: list[RunPoint]
    step: int
    metric: str
    count: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "fit": asdict(self.fit) | {"formula": "L = a * (N / 1e6)^b + c"},
            "step": self.step,
            "metric": self.metric,
            "param_count": self.count,
            "points": [asdict(p) | {"rel_error": p.rel_error} for p in self.points],
            **self.extra,
        }


def read_run(
    run_dir: Path, step: int | None, metric: str, window: int, smooth: str = "mean"
) -> tuple[ModelConfig, int, float]:
    """(model config, step used, loss) of a finished run folder (config.toml + metrics.jsonl)."""
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        raise FlmError(f"{run_dir} is not a run folder (no config.toml); pass folders that `flm train` wrote")
    model = read_config(cfg_path).model
    records = read_metrics(run_dir / "metrics.jsonl")
    if not records:
        raise FlmError(f"{run_dir} has no metrics.jsonl records; the run has not logged yet")
    at = step if step is not None else max(r["step"] for r in records)
    return model, at, loss_at_step(records, at, metric, window, smooth)


def check_same_run(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse to reuse a run folder that was trained from another config."""
    saved = run_dir / "config.toml"
    if saved.is_file() and read_config(saved).model_dump() != cfg.model_dump():
        raise FlmError(
            f"{run_dir} holds a run of another config (model, data, optimizer or schedule differ); "
            "train into another --out, or delete that folder"
        )


def start_or_resume(train_fn: Callable[..., Any], cfg: RunConfig, run_dir: Path) -> Any:
    """``train_fn(cfg, run_dir, resume=...)``: resumed from the run's last checkpoint, or started over when
    the run never reached one (its config and metrics from the failed start removed)."""
    resume = (run_dir / "config.toml").is_file() and latest_checkpoint(run_dir) is not None
    if not resume:
        for leftover in ("config.toml", "metrics.jsonl"):
            (run_dir / leftover).unlink(missing_ok=True)
    return train_fn(cfg, run_dir, resume=resume)


def _finished(run_dir: Path, step: int, metric: str) -> bool:
    return any(r.get("step") == step and metric in r for r in read_metrics(run_dir / "metrics.jsonl"))


def train_series(
    cfg: RunConfig,
    widths: Sequence[int],
    out_dir: Path,
    *,
    metric: str = "val_loss",
    train_fn: Callable[..., Any] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> dict[int, Path]:
    """Train ``cfg`` at each width into out_dir/w<width> with the normal trainer; finished runs are read,
    not retrained, and interrupted ones resumed."""
    train_fn = train_fn or train_stage
    dirs = {}
    for width in widths:
        wcfg = width_run_config(cfg, width)
        run_dir = out_dir / f"w{width}"
        dirs[width] = run_dir
        check_same_run(run_dir, wcfg)
        if not _finished(run_dir, wcfg.train.steps, metric):
            start_or_resume(train_fn, wcfg, run_dir)
        if on_done is not None:
            on_done(width)
    return dirs


def seed_dir(out_dir: Path, cfg: RunConfig, i: int) -> Path:
    """Where the i-th seed of a series trains: ``out_dir`` itself for the config's own seed (i = 0, the folders
    of a one-seed series), out_dir/seed<S> for seed S = train.seed + i."""
    return out_dir if i == 0 else out_dir / f"seed{cfg.train.seed + i}"


def train_seeds(cfg: RunConfig, widths: Sequence[int], out_dir: Path, seeds: int, **kw: Any) -> dict[int, list[Path]]:
    """``train_series`` at ``seeds`` seeds (train.seed, train.seed + 1, ...): the run folders of each width,
    one per seed. Several seeds per width average out what one seed's init and data order put into the fit
    (benchmarks/loss_prediction_seeds.py: one seed per width errs by up to 1.4% at width 512, the mean of four
    by at most 0.8%)."""
    out: dict[int, list[Path]] = {w: [] for w in widths}
    for i in range(seeds):
        data = cfg.model_dump()
        data["train"]["seed"] = cfg.train.seed + i
        dirs = train_series(RunConfig.model_validate(data), widths, seed_dir(out_dir, cfg, i), **kw)
        for w, d in dirs.items():
            out[w].append(d)
    return out


def series_dirs(out_dir: Path, widths: Sequence[int]) -> dict[int, Path]:
    """The run folder of each width of a series trained into ``out_dir`` (where ``train_series`` trains)."""
    return {width: out_dir / f"w{width}" for width in widths}


def split_series(widths: Sequence[int], targets: Sequence[int]) -> tuple[list[int], list[int]]:
    """(the widths to fit, every width of the series), sorted, fitted ones first; a width both fitted and
    predicted is refused."""
    overlap = set(widths) & set(targets)
    if overlap:
        raise FlmError(f"widths {sorted(overlap)} are in both --widths and --targets")
    fit = sorted(widths)
    return fit, fit + sorted(targets)


def runs_by_width(run_dirs: Sequence[Path], targets: Sequence[int]) -> tuple[dict[int, Path], list[int], ModelConfig]:
    """Finished run folders keyed by their d_model, the widths to fit (those not in ``targets``; default
    target: the widest run), and the widest run's model (the template of extrapolated widths)."""
    runs: dict[int, Path] = {}
    for run in run_dirs:
        if not (run / "config.toml").is_file():
            raise FlmError(f"--runs {run}: not a run folder (no config.toml)")
        width = read_config(run / "config.toml").model.d_model
        if width in runs:
            raise FlmError(f"--runs: {runs[width]} and {run} both have d_model {width}; give one per width")
        runs[width] = run
    chosen = set(targets) or {max(runs)}
    missing = chosen - set(runs)
    if missing:
        raise FlmError(f"--targets {sorted(missing)}: no run among --runs has that d_model")
    template = read_config(runs[max(runs)] / "config.toml").model
    return runs, [w for w in runs if w not in chosen], template


def predict_from_runs(
    runs: Mapping[int, Path | Sequence[Path]],
    fit_widths: Sequence[int],
    *,
    step: int | None = None,
    metric: str = "val_loss",
    window: int = 1,
    count: str = "non-embedding",
    smooth: str = "mean",
) -> Prediction:
    """Fit on the runs of ``fit_widths``, predict the rest (every run's loss read by ``loss_at_step``; a width
    with several runs, e.g. seeds, counts with their mean loss)."""
    points, steps = [], set()
    for width, given in sorted(runs.items()):
        dirs = [Path(given)] if isinstance(given, (str, Path)) else [Path(d) for d in given]
        read = [read_run(d, step, metric, window, smooth) for d in dirs]
        steps.update(at for _, at, _ in read)
        role = "fit" if width in fit_widths else "predict"
        loss = float(np.mean([loss for _, _, loss in read]))
        points.append(RunPoint(width, n_params(read[0][0], count), loss, role, str(dirs[0]), runs=len(dirs)))
    if len(steps) > 1:
        raise FlmError(f"the runs ended at different steps {sorted(steps)}; pass --step to compare one step")
    fitted = [p for p in points if p.role == "fit"]
    fit = fit_power_law([p.n_params for p in fitted], [p.loss for p in fitted])
    for p in points:
        p.predicted = float(fit(p.n_params))
    return Prediction(fit, points, steps.pop(), metric, count)


def extrapolate(pred: Prediction, template: ModelConfig, widths: Sequence[int]) -> list[dict[str, Any]]:
    """Predicted losses of widths that were not trained (``template`` at each width), kept in
    ``pred.extra["extrapolated"]``."""
    rows = []
    for width in widths:
        n = n_params(with_width(template, width), pred.count)
        rows.append({"width": width, "n_params": n, "predicted": float(pred.fit(n))})
    pred.extra["extrapolated"] = rows
    return rows


def save_prediction(pred: Prediction, out_dir: Path) -> tuple[Path, Path]:
    """prediction.json and prediction.png (loss vs N, log x, fitted curve extended to the largest run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "prediction.json", out_dir / "prediction.png"
    atomic_write(json_path, json.dumps(pred.to_json(), indent=2))
    extra = pred.extra.get("extrapolated", [])
    ns = np.array([p.n_params for p in pred.points] + [e["n_params"] for e in extra], dtype=np.float64)
    grid = np.geomspace(ns.min() / 1.5, ns.max() * 1.5, 200)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    f = pred.fit
    ax.plot(grid, f(grid), "-", color="0.4", label=f"fit: {f.a:.3g}·(N/1e6)^{f.b:.3g} + {f.c:.3g}")
    for role, style, label in (("fit", "o", "fitted runs"), ("predict", "s", "held-out runs (actual)")):
        sel = [p for p in pred.points if p.role == role]
        if sel:
            ax.plot(
                [p.n_params for p in sel],
                [p.loss for p in sel],
                style,
                label=label,
                mfc="none" if role == "predict" else None,
                ms=8,
            )
    for p in pred.points:
        if p.role == "predict":
            ax.annotate(
                f"w{p.width}: {100 * p.rel_error:+.2f}%",
                (p.n_params, p.loss),
                textcoords="offset points",
                xytext=(-10, 10),
                ha="right",
                fontsize=8,
            )
        else:
            ax.annotate(f"w{p.width}", (p.n_params, p.loss), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if extra:
        ax.plot([e["n_params"] for e in extra], [e["predicted"] for e in extra], "x", ms=8, label="extrapolated")
        for e in extra:
            ax.annotate(
                f"w{e['width']}: {e['predicted']:.3f}", (e["n_params"], e["predicted"]),
                textcoords="offset points", xytext=(-10, 10), ha="right", fontsize=8,
            )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(f"parameters ({pred.count})")
    ax.set_ylabel(f"{pred.metric} at step {pred.step}")
    ax.set_title("μScaling loss prediction")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return json_path, png_path
