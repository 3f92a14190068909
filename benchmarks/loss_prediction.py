"""μScaling loss prediction on the bundled corpus: train μP widths with the same hyperparameters, fit
L(N) = a·N^b + c on the small ones at one fixed step, predict a model >= 4x wider than the widest fitted one,
and compare with its actual loss (target: relative error <= 1%).

Every run is a normal `train_stage` run (flm.scaling.predict.train_series): an interrupted benchmark
resumes and finished runs are read back. Prints one JSON line and writes
benchmarks/results/loss_prediction.json and loss_prediction.png.

    .venv/bin/python benchmarks/loss_prediction.py            # fit 32..128, predict 512: ~12-22 min
    .venv/bin/python benchmarks/loss_prediction.py --seed 1   # the same with other inits and data order
    .venv/bin/python benchmarks/loss_prediction.py --eval-every 50 --smooth trend --window 400   # issue 24:
        # each run's loss from the trend of its last evaluations (flm.scaling.predict.loss_at_step); not run yet

Defaults: depth 1 (a 2-layer model's induction-head plateau makes the loss at a fixed step depend on the
seed by several percent at these budgets), 800 steps of 16 x 64 tokens, lr 7.07e-3 / init 0.02 /
output_mult 4 from `flm mup search` on the width-64 proxy, one CPU thread per process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from proxy_config import proxy_config
from rich.progress import Progress

from flm.config import RunConfig
from flm.io import atomic_write
from flm.scaling import predict as P

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_OUT = ROOT / "runs" / "bench" / "loss_prediction"


def base_config(args: argparse.Namespace) -> RunConfig:
    return proxy_config(
        args, name="loss-prediction", lr=args.lr, min_lr=args.lr / 10, eval_batches=args.eval_batches, seed=args.seed
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="32,48,64,96,128", help="widths the law is fitted on (>= 4)")
    p.add_argument("--targets", default="512", help="widths predicted (>= 4x the widest fitted)")
    p.add_argument("--steps", type=int, default=800, help="training steps, the fixed step (default 800)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step (default 16)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (default 64)")
    p.add_argument("--layers", type=int, default=1, help="depth (default 1: no induction-head plateau)")
    p.add_argument("--head-dim", type=int, default=16, help="head size; widths add heads (default 16)")
    p.add_argument("--base-width", type=int, default=64, help="μP base width (default 64)")
    p.add_argument(
        "--lr", type=float, default=7.07e-3, help="learning rate at the base width (default 7.07e-3)"
    )
    p.add_argument("--init-std", type=float, default=0.02, help="init std at the base width (default 0.02)")
    p.add_argument("--output-mult", type=float, default=4.0, help="μP output multiplier (default 4)")
    p.add_argument("--vocab", type=int, default=2048, help="BPE vocabulary (default 2048)")
    p.add_argument("--max-chars", type=int, default=4_000_000, help="training text used (default 4M chars)")
    p.add_argument("--eval-batches", type=int, default=32, help="validation batches at the fixed step")
    p.add_argument(
        "--params", default="non-embedding", choices=("non-embedding", "total"), help="N of the law"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="run folders")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: fastest on a shared 2-core box)"
    )
    p.add_argument("--seed", type=int, default=0, help="init and data-order seed of every run (default 0)")
    p.add_argument("--fresh", action="store_true", help="delete earlier runs in --out and train again")
    p.add_argument("--eval-every", type=int, default=0,
                   help="also validate every N steps (default 0: only at the fixed step); --smooth trend needs it")
    p.add_argument("--smooth", choices=P.SMOOTHING, default="mean",
                   help="each run's loss: the mean over --window steps (default 1: the fixed step alone) or the "
                   "trend line through the evaluations in the window, read at the fixed step")
    p.add_argument("--window", type=int, default=1, help="steps before the fixed step that --smooth reads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.out == DEFAULT_OUT:
        tag = (f"_seed{args.seed}" if args.seed else "") + (f"_eval{args.eval_every}" if args.eval_every else "")
        args.out = DEFAULT_OUT.with_name(f"loss_prediction{tag}")
    fit_widths = sorted(int(w) for w in args.widths.split(","))
    targets = sorted(int(w) for w in args.targets.split(","))
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    cfg = base_config(args)
    cfg.train.eval_every = args.eval_every

    t0 = time.perf_counter()
    widths = fit_widths + targets
    with Progress() as bar:
        task = bar.add_task("width series", total=len(widths))
        runs = P.train_series(cfg, widths, args.out, on_done=lambda w: bar.advance(task))
    train_seconds = {}
    for w, run in runs.items():
        recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
        train_seconds[str(w)] = round(recs[-1]["time"], 1)
    preds = {
        count: P.predict_from_runs(runs, fit_widths, metric="val_loss", count=count, window=args.window,
                                   smooth=args.smooth)
        for count in ("non-embedding", "total")
    }
    pred = preds[args.params]
    P.save_prediction(pred, args.out)
    held = [pt for pt in pred.points if pt.role == "predict"]
    result = {
        "name": "loss_prediction",
        "command": "python benchmarks/loss_prediction.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed,
        "fit_widths": fit_widths, "targets": targets, "step": pred.step, "metric": "val_loss",
        "tokens_per_run": args.steps * args.batch_size * args.seq_len,
        "config": {"n_layers": args.layers, "head_dim": args.head_dim, "base_width": args.base_width,
                   "lr": args.lr, "init_std": args.init_std, "output_mult": args.output_mult,
                   "vocab": args.vocab, "batch_size": args.batch_size, "seq_len": args.seq_len},
        "param_count": args.params,
        "prediction": pred.to_json(),
        "smooth": {"method": args.smooth, "window": args.window, "eval_every": args.eval_every},
        "max_abs_rel_error": max(abs(pt.rel_error or 0.0) for pt in held),
        # against each held-out run's own evaluation at the fixed step, unsmoothed
        "max_abs_rel_error_vs_raw": max(
            abs(pt.predicted / P.read_run(Path(pt.run_dir), pred.step, "val_loss", 1)[2] - 1) for pt in held
        ),
        "other_param_count": {
            c: {"fit": preds[c].to_json()["fit"],
                "rel_errors": {pt.width: pt.rel_error for pt in preds[c].points if pt.role == "predict"}}
            for c in preds if c != args.params
        },
        "train_seconds": train_seconds,
        "train_seconds_total": round(sum(train_seconds.values()), 1),
        "seconds_this_call": round(time.perf_counter() - t0, 1),  # small when all runs were read back
    }  # fmt: skip
    result["within_1pct"] = result["max_abs_rel_error"] <= 0.01
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "loss_prediction" + (f"_seed{args.seed}" if args.seed else "") + (
        f"_{args.smooth}{args.window}" if args.smooth != "mean" or args.window != 1 else "")
    atomic_write(RESULTS / f"{name}.json", json.dumps(result, indent=2))
    shutil.copy(args.out / "prediction.png", RESULTS / f"{name}.png")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
