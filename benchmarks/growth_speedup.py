"""Progressive growth vs training the final shape from scratch, side by side on the same data.

Runs the plan of CONFIG (default configs/demo.toml) with `flm run`, then its from-scratch baseline (the
final shape, the same number of tokens, the same optimizer settings and schedule shape), and reports the
FLOPs and wall time the progressive run needed to reach the scratch run's final validation loss:
speedup = scratch / progressive. Also the tokens-per-parameter budget. Prints one JSON line, writes
benchmarks/results/growth_speedup.json and growth_speedup.png.

    python benchmarks/growth_speedup.py [--config configs/demo.toml] [--work runs/bench-growth]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from flm.config import load_config
from flm.stages import resolve_stages
from flm.train.loop import train_stage
from flm.train.metrics import read_metrics
from flm.train.plot import plot_runs
from flm.train.run import run_plan, scratch_config

RESULTS = Path(__file__).resolve().parent / "results"


def first_reach(rows: list[dict], target: float, key: str) -> float | None:
    """Smallest ``key`` (tokens, flops, time) at which the validation loss reaches ``target``, linearly
    interpolated between evaluations; None when it never does."""
    vals = [(r[key], r["val_loss"]) for r in rows if "val_loss" in r]
    for (x0, y0), (x1, y1) in zip(vals, vals[1:]):
        if y1 <= target:
            if y0 <= target:
                return float(x0)
            return float(x0 + (x1 - x0) * (y0 - target) / (y0 - y1))
    return float(vals[0][0]) if vals and vals[0][1] <= target else None


def cumulative_time(rows: list[dict]) -> list[dict]:
    """Add a run-level wall-clock "wall" (stage clocks restart at each stage)."""
    out, offset, last_stage, last_t = [], 0.0, None, 0.0
    for r in rows:
        st = r.get("stage", 0)
        if last_stage is not None and st != last_stage:
            offset += last_t
        last_stage, last_t = st, r.get("time", 0.0)
        out.append({**r, "wall": offset + r.get("time", 0.0)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-growth"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    cfg = load_config(args.config, args.overrides)
    shutil.rmtree(args.work, ignore_errors=True)
    prog_dir, scratch_dir = args.work / "progressive", args.work / "scratch"
    t0 = time.perf_counter()
    run_plan(cfg, prog_dir)
    t_prog = time.perf_counter() - t0
    base = scratch_config(cfg, "tokens")
    t0 = time.perf_counter()
    train_stage(base, scratch_dir)
    t_scratch = time.perf_counter() - t0

    prog = cumulative_time(read_metrics(prog_dir / "metrics.jsonl"))
    scratch = cumulative_time(read_metrics(scratch_dir / "metrics.jsonl"))
    target = [r["val_loss"] for r in scratch if "val_loss" in r][-1]
    prog_final = [r["val_loss"] for r in prog if "val_loss" in r][-1]
    scratch_flops, scratch_wall = scratch[-1]["flops"], scratch[-1]["wall"]
    reach_flops = first_reach(prog, target, "flops")
    reach_wall = first_reach(prog, target, "wall")
    final = resolve_stages(cfg)[-1].model
    result = {
        "config": args.config,
        "final_shape": final.shape(),
        "final_params": final.num_params(),
        "tokens": scratch[-1]["tokens"],
        "tokens_per_param": scratch[-1]["tokens"] / final.num_params(),
        "scratch_val_loss": target,
        "progressive_val_loss": prog_final,
        "scratch_flops": scratch_flops,
        "progressive_flops": prog[-1]["flops"],
        "progressive_flops_to_reach": reach_flops,
        "flops_speedup": scratch_flops / reach_flops if reach_flops else None,
        "scratch_seconds": scratch_wall,
        "progressive_seconds": prog[-1]["wall"],
        "progressive_seconds_to_reach": reach_wall,
        "time_speedup": scratch_wall / reach_wall if reach_wall else None,
        "wall_clock_total_s": t_prog + t_scratch,
    }
    if reach_flops is None:  # progressive never got there: how far the scratch run had to go to match it
        scratch_reach = first_reach(scratch, prog_final, "flops")
        result["scratch_flops_to_reach_progressive_final"] = scratch_reach
        result["flops_ratio_at_progressive_final"] = (
            scratch_reach / prog[-1]["flops"] if scratch_reach else None
        )
    RESULTS.mkdir(exist_ok=True)
    plot_runs([prog_dir, scratch_dir], RESULTS / "growth_speedup.png")
    (RESULTS / "growth_speedup.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
