"""μScaling loss prediction over seeds (issue 24): benchmarks/loss_prediction.py at every seed, each run's loss
read from the trend of its late evaluations, fitted per seed; against the old one-evaluation reading of the
same runs, and against "several seeds per width": the fit on each width's loss averaged over the seeds (all of
them, or the other seeds only: the held-out run then shares no seed with the fit). Target: |error| <= 1% at
every seed, mean |error| <= 0.5%.

    .venv/bin/python benchmarks/loss_prediction_seeds.py                 # seeds 0-4: 17-29 min per seed, loaded
    .venv/bin/python benchmarks/loss_prediction_seeds.py --seeds 0,1     # a subset

The runs are loss_prediction.py's (runs/bench/loss_prediction[_seedS]_eval50): finished ones are read back,
so running the seeds one by one (or in parallel, one process each) and this afterwards costs no training.
Prints one JSON line; writes benchmarks/results/loss_prediction_seeds.json and .png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean

import loss_prediction as LP

from flm.io import atomic_write
from flm.scaling import predict as P

RESULTS = Path(__file__).resolve().parent / "results"
METHOD = {"smooth": "trend", "window": 400, "eval_every": 50}  # declared before the seeds were run
COMPARE = {"smooth": "mean", "window": 1}  # one evaluation at the fixed step: the earlier method


def errors(pred: P.Prediction) -> dict[int, float]:
    return {pt.width: pt.rel_error for pt in pred.points if pt.role == "predict" and pt.rel_error is not None}


def one_seed(seed: int, extra: list[str]) -> dict:
    argv = ["--seed", str(seed), "--eval-every", str(METHOD["eval_every"]), "--smooth", METHOD["smooth"],
            "--window", str(METHOD["window"]), *extra]
    LP.main(argv)
    name = "loss_prediction" + (f"_seed{seed}" if seed else "") + f"_{METHOD['smooth']}{METHOD['window']}"
    result = json.loads((RESULTS / f"{name}.json").read_text())
    runs = {pt["width"]: Path(pt["run_dir"]) for pt in result["prediction"]["points"]}
    fit = [pt["width"] for pt in result["prediction"]["points"] if pt["role"] == "fit"]
    old = P.predict_from_runs(runs, fit, metric="val_loss", count=result["param_count"], **COMPARE)
    held = [pt for pt in result["prediction"]["points"] if pt["role"] == "predict"]
    return {"seed": seed, "losses": {str(pt["width"]): pt["loss"] for pt in result["prediction"]["points"]},
            "runs": {str(w): str(d) for w, d in runs.items()}, "fit_widths": fit, "count": result["param_count"],
            "errors": {str(pt["width"]): pt["rel_error"] for pt in held},
            "errors_one_evaluation": {str(w): e for w, e in errors(old).items()},
            "actual": {str(pt["width"]): pt["loss"] for pt in held},
            "predicted": {str(pt["width"]): pt["predicted"] for pt in held}}


def pooled(rows: list[dict], own: bool) -> dict[str, dict[str, float]]:
    """"Several seeds per width" (`flm predict --seeds`'s fit): per seed, one fit on every fit width's runs at
    the seeds (``own``: all of them; else the other seeds only, so the held-out run shares no seed with the
    fit), against the seed's held-out runs. What is left is the held-out runs' own seed noise and the law's
    bias."""
    out = {}
    for r in rows:
        group = [o for o in rows if own or o is not r]
        runs = {int(w): [Path(o["runs"][w]) for o in group] if int(w) in r["fit_widths"] else Path(d)
                for w, d in r["runs"].items()}
        pred = P.predict_from_runs(runs, r["fit_widths"], metric="val_loss", count=r["count"],
                                   smooth=METHOD["smooth"], window=METHOD["window"])
        out[str(r["seed"])] = {str(w): e for w, e in errors(pred).items()}
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib  # heavy optional dependency: imported where it is used

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    seeds = [r["seed"] for r in rows]
    for key, label, mark in (("errors", f"fit on its own seed (trend of the last {METHOD['window']} steps)", "o"),
                             ("errors_one_evaluation", "fit on its own seed (one evaluation at the step)", "x"),
                             ("errors_pooled_others", "fit on the mean of the other seeds per width (trend)",
                              "s")):
        if key not in rows[0]:  # one seed: nothing to pool
            continue
        ax.plot(seeds, [100 * max(r[key].values(), key=abs) for r in rows], mark, label=label, markersize=8,
                fillstyle="none" if mark == "s" else "full")
    for y in (-1, 1):
        ax.axhline(y, color="grey", linestyle=":")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("seed")
    ax.set_ylabel("prediction error of width 512 (%)")
    ax.set_xticks(seeds)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0-4)")
    args, extra = p.parse_known_args(argv)  # the rest goes to loss_prediction.py (e.g. --threads 2)
    rows = [one_seed(int(s), extra) for s in args.seeds.split(",")]
    if len(rows) > 1:
        for key, own in (("errors_pooled", True), ("errors_pooled_others", False)):
            for r, errs in zip(rows, pooled(rows, own).values()):
                r[key] = errs

    def summary(key: str) -> dict:
        errs = [abs(e) for r in rows for e in r[key].values()]
        return {"mean_abs": mean(errs), "max_abs": max(errs), "within_1pct_every_seed": max(errs) <= 0.01,
                "target_met": max(errs) <= 0.01 and mean(errs) <= 0.005}

    result = {"name": "loss_prediction_seeds", "method": METHOD, "compare": COMPARE, "seeds": rows,
              "trend": summary("errors"), "one_evaluation": summary("errors_one_evaluation"),
              "pooled_all_seeds": summary("errors_pooled") if len(rows) > 1 else None,
              "pooled_other_seeds": summary("errors_pooled_others") if len(rows) > 1 else None,
              "command": "python benchmarks/loss_prediction_seeds.py " + " ".join(sys.argv[1:] if argv is None
                                                                                  else argv)}
    RESULTS.mkdir(exist_ok=True)
    plot(rows, RESULTS / "loss_prediction_seeds.png")
    atomic_write(RESULTS / "loss_prediction_seeds.json", json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("trend", "one_evaluation", "pooled_all_seeds", "pooled_other_seeds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
