"""μP learning-rate transfer: is the best of 5 learning rates on a width-64 proxy also the best (within one
grid step) on a width-512 model? Under μP it should be; under standard parameterization (SP) the optimum
moves to smaller learning rates as the model widens.

Every run is a normal `train_stage` run on the bundled corpus (flm.scaling.search.run_search), so an
interrupted benchmark resumes and finished runs are read back. Prints one JSON line and writes
benchmarks/results/mup_transfer.json and mup_transfer.png.

    .venv/bin/python benchmarks/mup_transfer.py     # 20 runs; ~1 h on one core (width 512: 4-10 min a run)
    .venv/bin/python benchmarks/mup_transfer.py --parameterizations mup   # and `... sp` in parallel

Defaults: depth 1, 600 steps of 16 x 64 tokens, init 0.02 and output_mult 4 (from `flm mup search` on the
width-64 proxy), learning rates 1.77e-3 .. 2.83e-2 in factor-2 steps, one CPU thread per process.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from proxy_config import proxy_config
from rich.progress import Progress

from flm.config import RunConfig
from flm.io import atomic_write
from flm.mup import with_width
from flm.scaling.search import SearchPoint, run_search

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def base_config(args: argparse.Namespace) -> RunConfig:
    return proxy_config(args, name="mup-transfer", lr=1e-2, min_lr=1e-3, eval_batches=16, seed=0)


def run_config(base: RunConfig, width: int, parameterization: str) -> RunConfig:
    data = base.model_dump()
    data["model"] = with_width(base.model, width, mup=parameterization == "mup").model_dump()
    data["name"] = f"{base.name}-{parameterization}-w{width}"
    return RunConfig.model_validate(data)


def best_index(losses: list[float | None]) -> int | None:
    finite = [(v, i) for i, v in enumerate(losses) if v is not None and math.isfinite(v)]
    return min(finite)[1] if finite else None


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pars = list(result["val_loss"])
    fig, axes = plt.subplots(1, len(pars), figsize=(5.2 * len(pars), 3.8), squeeze=False, sharey=True)
    for ax, par in zip(axes[0], pars):
        for width, losses in result["val_loss"][par].items():
            pts = [(lr, v) for lr, v in zip(result["lrs"], losses) if v is not None]
            ax.plot(*zip(*pts), marker="o", label=f"width {width}")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(result["lrs"], [f"{lr:.3g}" for lr in result["lrs"]], fontsize=8)
        ax.set_xlabel("learning rate (at the base width)")
        ax.set_title("μP" if par == "mup" else "standard parameterization")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"val loss after {result['steps']} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="64,512", help="proxy width first, then the target (default 64,512)")
    p.add_argument(
        "--lrs", default="1.77e-3,3.54e-3,7.07e-3,1.41e-2,2.83e-2", help="learning-rate grid (factor-2 steps)"
    )
    p.add_argument("--parameterizations", default="mup,sp", help="mup and/or sp")
    p.add_argument("--steps", type=int, default=600, help="training steps per run (default 600)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step (default 16)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (default 64)")
    p.add_argument("--layers", type=int, default=1, help="depth (default 1: no induction-head plateau)")
    p.add_argument("--head-dim", type=int, default=16, help="head size; widths add heads (default 16)")
    p.add_argument("--base-width", type=int, default=64, help="μP base width (default 64)")
    p.add_argument("--init-std", type=float, default=0.02, help="init std at the base width (default 0.02)")
    p.add_argument(
        "--output-mult", type=float, default=4.0, help="output multiplier (default 4, tuned at 64)"
    )
    p.add_argument("--vocab", type=int, default=2048, help="BPE vocabulary (default 2048)")
    p.add_argument("--max-chars", type=int, default=4_000_000, help="training text used (default 4M chars)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: fastest on a shared 2-core box)"
    )
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "mup_transfer", help="run folders")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    lrs = [float(v) for v in args.lrs.split(",")]
    pars = args.parameterizations.split(",")
    base = base_config(args)

    t0 = time.perf_counter()
    losses: dict[str, dict[str, list[float | None]]] = {par: {} for par in pars}
    seconds: dict[str, dict[str, float]] = {par: {} for par in pars}
    with Progress() as bar:
        task = bar.add_task("runs", total=len(pars) * len(widths) * len(lrs))
        for par in pars:
            for width in widths:
                cfg = run_config(base, width, par)
                bar.update(task, description=f"{par} width {width}")
                pts = [SearchPoint(lr, cfg.model.init_std, cfg.model.output_mult) for lr in lrs]
                res = run_search(cfg, pts, args.out / par / f"w{width}", on_done=lambda r: bar.advance(task))
                losses[par][str(width)] = [r.val_loss if r.status == "ok" else None for r in res]
                seconds[par][str(width)] = sum(r.seconds for r in res)

    result: dict = {
        "name": "mup_transfer",
        "command": "python benchmarks/mup_transfer.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "widths": widths, "lrs": lrs, "steps": args.steps,
        "tokens_per_run": args.steps * args.batch_size * args.seq_len,
        "model": {"n_layers": args.layers, "head_dim": args.head_dim, "base_width": args.base_width,
                  "vocab": args.vocab, "init_std": args.init_std, "output_mult": args.output_mult,
                  "batch_size": args.batch_size, "seq_len": args.seq_len},
        "val_loss": losses, "train_seconds": seconds,
        "best_lr": {}, "best_index_shift": {},
    }  # fmt: skip
    for par in pars:
        idx = {w: best_index(v) for w, v in losses[par].items()}
        result["best_lr"][par] = {w: (lrs[i] if i is not None else None) for w, i in idx.items()}
        lo, hi = idx[str(widths[0])], idx[str(widths[-1])]
        result["best_index_shift"][par] = None if lo is None or hi is None else hi - lo
    shift = result["best_index_shift"].get("mup")
    result["mup_transfers"] = shift is not None and abs(shift) <= 1
    result["seconds_this_call"] = round(time.perf_counter() - t0, 1)  # 0 when all runs were read back

    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULTS / "mup_transfer.json", json.dumps(result, indent=2))
    plot(result, RESULTS / "mup_transfer.png")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
