"""The loss model of growth plans: L(N, D) = E + A/N^α + B/D^β, with N parameters and D training tokens.

Fitted as Hoffmann et al. 2022 (Chinchilla, arXiv 2203.15556, Approach 3, eq. 10 and Appendix D.2): the
Huber loss (δ = 1e-3) between log L and log of the model, LSE(a - α·log N, b - β·log D, e) with A = e^a,
B = e^b, E = e^e, minimised by L-BFGS from several starts. The starts here are the best points of a coarse
grid (Hoffmann et al. start from every point of their grid; screening the grid first costs one vectorised
evaluation instead of thousands of optimisations). The fit's uncertainty is a bootstrap over runs: the runs
are resampled with replacement and refitted, which keeps the points of one run (one curve) together.

The input points come from runs' metrics.jsonl (``points_from_runs``): the validation loss against the tokens
trained so far, for runs of several sizes. N counts parameters as flm.scaling.predict does (non-embedding by
default, as Kaplan et al.). Without a fit, ``CHINCHILLA`` is Hoffmann et al.'s own (eq. 10), fitted on
MassiveText: its losses are in another tokenizer's units, so only its shape carries over.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

from flm.checkpoint import read_config
from flm.errors import FlmError
from flm.io import atomic_write
from flm.scaling.predict import n_params
from flm.train.metrics import read_metrics

HUBER_DELTA = 1e-3  # Hoffmann et al.'s δ
PARAMS = ("E", "A", "B", "alpha", "beta")
FIT_FORMAT = "flm loss model v1"


@dataclass
class LossModel:
    """L(N, D) = E + A/N^alpha + B/D^beta; ``samples``: bootstrap refits as rows of (E, A, B, alpha, beta)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    count: str = "non-embedding"  # which parameter count N is (flm.scaling.predict.n_params)
    points: int = 0
    runs: int = 0
    huber: float = 0.0  # mean Huber loss of the log-residuals at the optimum
    samples: list[list[float]] = field(default_factory=list)
    bumps: dict[str, float] = field(default_factory=dict)  # loss bump per growth kind (width, ffn, heads, depth)
    source: str = "fit"

    def __call__(self, n: Any, d: Any) -> Any:
        n, d = np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def dloss_dtokens(self, n: float, d: float) -> float:
        """∂L/∂D (negative: loss falls with tokens)."""
        return -self.beta * self.B * d ** (-self.beta - 1.0)

    def tokens_for_loss(self, n: float, loss: float) -> float:
        """The D at which a model of N parameters reaches ``loss`` (inf when ``loss`` is at or below what N can
        reach with infinite data)."""
        gap = loss - self.E - self.A / n**self.alpha
        return math.inf if gap <= 0 else (self.B / gap) ** (1.0 / self.beta)

    def std(self) -> dict[str, float]:
        """Bootstrap standard deviation of every parameter (empty without samples)."""
        if len(self.samples) < 2:
            return {}
        s = np.asarray(self.samples)
        return {k: float(v) for k, v in zip(PARAMS, s.std(axis=0, ddof=1))}

    def loss_std(self, n: float, d: float) -> float | None:
        """Bootstrap standard deviation of the predicted L(n, d), or None without samples."""
        if len(self.samples) < 2:
            return None
        s = np.asarray(self.samples)
        return float(np.std(s[:, 0] + s[:, 1] / n ** s[:, 3] + s[:, 2] / d ** s[:, 4], ddof=1))

    def to_json(self) -> dict[str, Any]:
        return {"format": FIT_FORMAT, "formula": "L = E + A / N^alpha + B / D^beta", **asdict(self),
                "std": self.std()}


# Hoffmann et al. 2022, eq. 10 (Approach 3): N total parameters, D tokens, loss in nats of their tokenizer.
CHINCHILLA = LossModel(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, count="total",
                       source="Hoffmann et al. 2022, eq. 10 (MassiveText; not fitted on your data)")


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> np.ndarray:
    """Mean Huber loss of the log-residuals for every row of ``theta`` = (a, b, e, alpha, beta)."""
    theta = np.atleast_2d(theta)
    a, b, e, al, be = (theta[:, i : i + 1] for i in range(5))
    pred = logsumexp(np.stack([a - al * log_n, b - be * log_d, np.broadcast_to(e, (len(theta), len(log_n)))]),
                     axis=0)
    return huber(HUBER_DELTA, pred - log_l).mean(axis=1)


def _grid() -> np.ndarray:
    """Start grid in (a, b, e, alpha, beta), Hoffmann et al.'s ranges."""
    axes = (np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), np.arange(-1, 1.5, 0.5),
            np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 5)


def _value_and_grad(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray
                    ) -> tuple[float, np.ndarray]:
    """The objective of one ``theta``, divided by δ (at the optimum it is ~δ·|residual|, far below L-BFGS's
    tolerances otherwise), and its analytic gradient."""
    a, b, e, al, be = theta
    u = np.stack([a - al * log_n, b - be * log_d, np.full_like(log_n, e)])
    top = u.max(axis=0)
    ex = np.exp(u - top)
    total = ex.sum(axis=0)
    r = top + np.log(total) - log_l  # log-sum-exp by hand: scipy's is several times slower on short arrays
    w = ex / total  # softmax: ∂pred/∂u
    ar = np.abs(r)
    value = np.where(ar <= HUBER_DELTA, 0.5 * r * r, HUBER_DELTA * (ar - 0.5 * HUBER_DELTA)).mean()
    dr = np.clip(r, -HUBER_DELTA, HUBER_DELTA) / (len(r) * HUBER_DELTA)  # Huber'(r), averaged, scaled
    grad = np.array([dr @ w[0], dr @ w[1], dr @ w[2], -(dr * w[0]) @ log_n, -(dr * w[1]) @ log_d])
    return float(value / HUBER_DELTA), grad


def _minimise(log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, float]:
    best, best_f = starts[0], math.inf
    bounds = [(-10, 60), (-10, 60), (-5, 5), (0.0, 3.0), (0.0, 3.0)]
    for x0 in starts:
        res = minimize(_value_and_grad, x0, args=(log_n, log_d, log_l), jac=True, method="L-BFGS-B",
                       bounds=bounds, options={"maxiter": 5000, "ftol": 1e-13, "gtol": 1e-9})
        if res.fun * HUBER_DELTA < best_f:
            best, best_f = res.x, float(res.fun) * HUBER_DELTA
    return best, best_f


def check_points(n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> None:
    if not (len(n) == len(d) == len(loss)):
        raise FlmError(f"the fit needs one N, D and loss per point; got {len(n)}, {len(d)} and {len(loss)}")
    if len(n) < 5:
        raise FlmError(f"L(N, D) has 5 parameters: fit it on at least 5 points (got {len(n)}); log more "
                       "evaluations (train.eval_every) or give more runs")
    if len(set(n.tolist())) < 2:
        raise FlmError("every point has the same model size N: fit on runs of at least 2 sizes (3+ to trust α)")
    for name, v in (("N", n), ("D", d), ("loss", loss)):
        if not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise FlmError(f"the fit's {name} values must be finite and > 0; got {v[~np.isfinite(v) | (v <= 0)][:3]}")


def fit_loss_model(n: Sequence[float], d: Sequence[float], loss: Sequence[float], *,
                   runs: Sequence[Any] | None = None, bootstrap: int = 20, starts: int = 3, seed: int = 0,
                   count: str = "non-embedding") -> LossModel:
    """Fit L(N, D) to the points (n[i], d[i], loss[i]); ``runs[i]`` names the run of point i (default: its N),
    which the bootstrap resamples as a unit."""
    n_a, d_a, l_a = (np.asarray(v, dtype=np.float64) for v in (n, d, loss))
    check_points(n_a, d_a, l_a)
    log_n, log_d, log_l = np.log(n_a), np.log(d_a), np.log(l_a)
    grid = _grid()
    scores = _objective(grid, log_n, log_d, log_l)
    best, f = _minimise(log_n, log_d, log_l, grid[np.argsort(scores)[:starts]])
    keys = np.asarray(runs if runs is not None else n_a)
    groups = [np.flatnonzero(keys == k) for k in dict.fromkeys(keys.tolist())]
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(10 * bootstrap if len(groups) > 1 else 0):
        if len(samples) == bootstrap:
            break
        idx = np.concatenate([groups[i] for i in rng.integers(len(groups), size=len(groups))])
        if len(set(n_a[idx].tolist())) < 2:  # a resample of one size cannot fit α: draw again
            continue
        theta, _ = _minimise(log_n[idx], log_d[idx], log_l[idx], np.stack([best]))
        samples.append(_params(theta))
    E, A, B, al, be = _params(best)
    return LossModel(E, A, B, al, be, count=count, points=len(n_a), runs=len(groups), huber=f, samples=samples)


def _params(theta: np.ndarray) -> list[float]:
    a, b, e, al, be = (float(v) for v in theta)
    return [math.exp(e), math.exp(a), math.exp(b), al, be]


# ----- input from runs and the fit file --------------------------------------------------------------


def points_from_runs(run_dirs: Sequence[Path], metric: str = "val_loss", count: str = "non-embedding",
                     skip: float = 0.25) -> tuple[list[float], list[float], list[float], list[str]]:
    """(N, D, loss, run) of every logged ``metric`` of the runs after the first ``skip`` share of each run's
    tokens (the warmup and the fastest early fall follow no power law in D)."""
    out: tuple[list[float], list[float], list[float], list[str]] = ([], [], [], [])
    for run in map(Path, run_dirs):
        if not (run / "config.toml").is_file():
            raise FlmError(f"{run}: not a run folder (no config.toml); give folders that `flm train` wrote")
        cfg = read_config(run / "config.toml")
        if cfg.stages:
            raise FlmError(f"{run} is a progressive run (flm run): fit the loss model on from-scratch runs")
        per_step = cfg.train.batch_size * cfg.seq_len
        rows = [(r.get("tokens") or r["step"] * per_step, r[metric]) for r in read_metrics(run / "metrics.jsonl")
                if metric in r and "event" not in r and r.get("step", 0) > 0]
        if not rows:
            raise FlmError(f"{run}: no '{metric}' logged after step 0 in metrics.jsonl; train it (with eval_every)")
        last = max(t for t, _ in rows)
        n = n_params(cfg.model, count)
        for tokens, loss in rows:
            if tokens >= skip * last:
                for lst, v in zip(out, (float(n), float(tokens), float(loss), str(run))):
                    lst.append(v)  # type: ignore[arg-type]
    return out


def save_fit(model: LossModel, path: Path) -> None:
    atomic_write(path, json.dumps(model.to_json(), indent=2))


def load_fit(path: Path) -> LossModel:
    """A fit file written by ``save_fit`` (`flm plan fit`); one FlmError line for anything else."""
    where = f"--fit {path}"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FlmError(f"{where}: no such file; write one with `flm plan fit RUNS... --out {path}`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FlmError(f"{where}: not a JSON fit file ({e}); write one with `flm plan fit`") from None
    if not isinstance(data, dict) or data.get("format") != FIT_FORMAT:
        raise FlmError(f"{where}: not a loss-model fit (no format '{FIT_FORMAT}'); write one with `flm plan fit`")
    try:
        vals = {k: float(data[k]) for k in PARAMS}
        bumps = {str(k): float(v) for k, v in (data.get("bumps") or {}).items()}
    except (KeyError, TypeError, ValueError) as e:
        raise FlmError(f"{where}: missing or non-numeric parameter {e}; it needs E, A, B, alpha, beta") from None
    if not all(math.isfinite(v) for v in vals.values()) or min(vals.values()) <= 0:
        raise FlmError(f"{where}: parameters must be finite and > 0, got {vals}")
    return LossModel(**vals, count=str(data.get("count", "non-embedding")), points=int(data.get("points", 0)),
                     runs=int(data.get("runs", 0)), huber=float(data.get("huber", 0.0)),
                     samples=[list(map(float, s)) for s in data.get("samples", [])], bumps=bumps,
                     source=str(data.get("source", "fit")))
