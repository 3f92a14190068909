"""Progressive growth (MSG and three literature baselines) vs training the final shape from scratch, on the same
data, to the same final shape, for the same number of tokens.

Arms (each run with `flm run`, scratch with `flm train`'s loop), for every seed, back to back:
- scratch: the final shape from step 0 (``scratch_config``: the plan's tokens, peak LR and warmup).
- msg: the plan of CONFIG as it is (default configs/demo.toml: width 128 -> 192, then depth 4 -> 6).
- net2net: the same stages, every growth with ``method = "net2net"`` (it reaches any shape).
- gstack: G_stack stacks whole models, so depth must grow by an integer factor: two stages, the final shape at
  n_layers / g (g = --gstack-factor, default 2: 3 -> 6 layers for the demo), stacked g times.
- hyperclone: HyperCloning duplicates the width by integer factors: two stages, the final shape with d_model,
  heads (head_dim kept) and d_ff divided by k (--hyperclone-factor, default 2: d 96 -> 192 for the demo).
- scratch-0.125x/0.25x/0.5x/1x (alias "compute") and planned: compute-matched from-scratch models and the
  `flm plan grow` schedule (benchmarks/compute_arms.py); every arm is also compared with the best of the former.
The two-stage arms grow where the plan first grows (the first stage's steps at the small shape, the rest at the
final one, the same total tokens), take the first growth's ramp_steps as their loss-bump window, and the
second stage's other keys (lr_scale, batch_size, ...). Every arm uses the plan's LR schedule (lr_mode).

Reported per arm and seed (the definitions are written into the JSON): FLOPs and wall-clock seconds to reach
the same seed's scratch final validation loss (linearly interpolated between evaluations) and the speedups
scratch total / that; the reverse ratio (the FLOPs scratch needed to reach the arm's final validation loss over
the arm's total FLOPs); the final loss gap; the loss bump of every growth (flm.growth.bump: the largest
rise of the training and of the validation loss during the growth's first ramp_steps steps over the value
right before it); the machine load around each arm (load average before/after, the CPU share other processes
used; a warning when the machine is busy, as benchmarks/throughput.py does). One plot: validation loss vs FLOPs
and vs seconds, all arms and seeds.

    python benchmarks/growth_speedup.py [--config configs/demo.toml] [--seeds 2] [--arms msg,gstack,...]
    python benchmarks/growth_speedup.py --quick     # tiny shapes, 60 steps per arm: about 2 minutes idle

    python benchmarks/growth_speedup.py --config configs/data-rich.toml --seeds 1 --name growth_speedup_data_rich \
        --work runs/bench-rich   # 20 tokens per parameter from scratch: about 70 minutes idle
    ... --arms scratch,msg --reuse   # add arms later: keeps the arms already trained in --work
    python benchmarks/growth_speedup.py --seeds 1 --arms scratch,compute,msg,planned --name growth_speedup_compute
        # growth vs the best from-scratch model for the same FLOPs (issue 24): about 40 minutes idle

Writes benchmarks/results/growth_speedup.json, .png and .md (the README's table); growth_speedup_quick.* with
--quick, NAME.* with --name.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any

import compute_arms as C
from throughput import cpu_busy

from flm.checkpoint import read_config
from flm.config import RunConfig, config_from_dict, config_to_dict, load_config
from flm.growth.bump import EVENT
from flm.io import atomic_write
from flm.scaling.plan_search import plan_flops
from flm.stages import resolve_stages
from flm.train.loop import train_stage
from flm.train.metrics import read_metrics
from flm.train.run import run_plan, scratch_config

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("scratch", *C.SIZES, "msg", "net2net", "gstack", "hyperclone", C.PLANNED)  # planned last: it needs a fit
ALIASES = {"compute": list(C.SIZES)}
BUSY_PCT = 10  # others' CPU share above which the wall-clock figures are noise

DEFINITIONS = {
    "target": "the same seed's scratch run's final validation loss",
    "flops_to_reach": "FLOPs at which the arm's validation loss first reaches the target, linearly interpolated "
                      "between evaluations (null: never)",
    "flops_speedup": "scratch's total FLOPs / the arm's flops_to_reach",
    "seconds_to_reach, seconds_speedup": "the same in wall-clock seconds: the stages' clocks (training, evaluations "
                                         "and checkpoints; not the start-up nor the growth between stages, which "
                                         "load.process_seconds includes)",
    "reverse_ratio": "FLOPs scratch needed to reach the arm's final validation loss / the arm's total FLOPs "
                     "(> 1: the arm's compute bought more than scratch's; null: scratch never got there)",
    "reverse_seconds_ratio": "the same in wall-clock seconds (the stages' clocks, as seconds_to_reach)",
    "final_gap": "the arm's final validation loss - scratch's (negative: better)",
    "bumps": "per growth (flm.growth.bump): the largest rise of the training and the validation loss during "
             "the growth's first ramp_steps steps over the last value before it; baselines have no masks, their "
             "ramp_steps is only this window",
    "load": "load average before and after the arm; others_cpu_pct: CPU share other processes used meanwhile",
    "best_scratch": "the compute-matched from-scratch arm (scratch-0.125x/0.25x/0.5x/1x: the whole-head widths "
                    "nearest an eighth, a quarter, half, all of the final shape's non-embedding parameters, each "
                    "trained for the progressive plan's FLOPs) with the lowest final validation loss at the same seed",
    "vs_best_scratch": "the arm's final validation loss - best scratch's (negative: growth beat every from-scratch "
                       "model of these sizes for the compute)",
    "best_scratch_speedup": "best scratch's total FLOPs / the FLOPs at which the arm first reaches best scratch's "
                            "final loss (null: never)",
    "planned": "MSG with the schedule `flm plan grow` makes for the plan's FLOPs from a loss model fitted on the "
               "first seed's from-scratch arms (compute_arms.py); predicted vs measured final validation loss",
}


def first_reach(rows: list[dict], target: float, key: str) -> float | None:
    """Smallest ``key`` (tokens, flops, wall) at which the validation loss reaches ``target``, linearly
    interpolated between evaluations; None when it never does."""
    vals = [(r[key], r["val_loss"]) for r in rows if "val_loss" in r]
    for (x0, y0), (x1, y1) in zip(vals, vals[1:]):
        if y1 <= target:
            if y0 <= target:
                return float(x0)
            return float(x0 + (x1 - x0) * (y0 - target) / (y0 - y1))
    return float(vals[0][0]) if vals and vals[0][1] <= target else None


def cumulative_time(rows: list[dict]) -> list[dict]:
    """Add a run-level wall-clock "wall" (stage clocks restart at each stage; an event record, which has no
    clock, gets the time of the record before it)."""
    out, offset, last_stage, last_t = [], 0.0, None, 0.0
    for r in rows:
        st = r.get("stage", 0)
        if last_stage is not None and st != last_stage:
            offset += last_t
            last_t = 0.0
        last_stage, last_t = st, r.get("time", last_t)
        out.append({**r, "wall": offset + last_t})
    return out


def quick_plan(data: dict[str, Any]) -> dict[str, Any]:
    """--quick: the demo's recipe at toy size (final d 64, 4 layers, 4 heads of 16, d_ff 256; 60 steps of 8 x 32)."""
    data["model"].update(d_model=48, n_layers=2, n_heads=3, d_ff=None, head_dim=None, max_seq_len=32)
    data["train"].update(batch_size=8, eval_every=6, eval_batches=2, log_every=1, ckpt_every=0, progress=False)
    data["optim"].update(warmup_steps=6)
    data["stages"] = [
        {"steps": 36},
        {"steps": 12, "grow": {"d_model": 64, "d_ff": 256, "ramp_steps": 4}},
        {"steps": 12, "grow": {"n_layers": 4, "ramp_steps": 4, "depth_position": "interleave"}},
    ]
    return data


def _small(final: dict[str, Any], arm: str, factor: int) -> dict[str, Any]:
    """The first stage's model of a two-stage arm: the final one with its depth (gstack) or widths (hyperclone)
    divided by ``factor``."""
    keys = ("n_layers",) if arm == "gstack" else ("d_model", "n_heads", "d_ff")
    small = dict(final)
    for k in keys:
        if final[k] % factor:
            raise SystemExit(f"{arm}: the final {k} = {final[k]} is not a multiple of {factor}; pick another "
                             f"--{arm}-factor")
        small[k] //= factor
    if arm == "hyperclone" and final.get("mup_base_width"):  # grow.readout = "keep" scales output_mult back up
        small["output_mult"] = final["output_mult"] / factor
    return small


def arm_config(plan: RunConfig, arm: str, seed: int, factors: dict[str, int],
               planned: RunConfig | None = None) -> RunConfig:
    """The run config of ``arm`` (module docstring) at ``seed``; ``planned``: the `flm plan grow` schedule."""
    if arm == "scratch":
        data = config_to_dict(scratch_config(plan, "tokens"))
    elif arm in C.SIZES:
        data = config_to_dict(C.sized_scratch(plan, arm, plan_flops(plan)))
    elif arm == C.PLANNED:
        assert planned is not None
        data = config_to_dict(planned)
    else:
        data = config_to_dict(plan)
    data["train"]["seed"] = seed
    data["name"] = f"{plan.name}-{arm}-seed{seed}"
    if arm == "net2net":
        for st in data["stages"][1:]:
            st["grow"]["method"] = "net2net"
    elif arm in ("gstack", "hyperclone"):
        stages = resolve_stages(plan)
        final = config_to_dict(stages[-1].model)
        first, second = dict(data["stages"][0]), dict(data["stages"][1])
        first.pop("tokens", None)
        first["steps"] = stages[0].steps
        grow = {k: final[k] for k in (("n_layers",) if arm == "gstack" else ("d_model", "n_heads", "d_ff"))}
        second.pop("tokens", None)
        second.update(steps=sum(s.steps for s in stages[1:]),
                      grow={**grow, "method": arm, "ramp_steps": second["grow"].get("ramp_steps", 100)})
        data["model"] = _small(final, arm, factors[arm])
        data["stages"] = [first, second]
    return config_from_dict(data, where=f"arm {arm}")


def run_arm(cfg: RunConfig, arm: str, out: Path) -> dict[str, Any]:
    """Train one arm; its metrics rows (with "wall") and the machine's load around it."""
    shutil.rmtree(out, ignore_errors=True)  # an arm interrupted before: start it again
    load0, busy0, own0, t0 = os.getloadavg()[0], cpu_busy(), sum(os.times()[:4]), time.perf_counter()
    if arm == "scratch" or arm in C.SIZES:
        train_stage(cfg, out)
    else:
        run_plan(cfg, out)
    wall = time.perf_counter() - t0
    others = max(cpu_busy() - busy0 - (sum(os.times()[:4]) - own0), 0.0) / (wall * (os.cpu_count() or 1))
    load = {"loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)], "others_cpu_pct": round(100 * others, 1),
            "process_seconds": round(wall, 1)}
    if load["others_cpu_pct"] > BUSY_PCT:  # not the load average: it still counts the previous arm, ours
        print(f"warning: arm {arm}: the machine was busy (load {load['loadavg']}, other processes "
              f"{load['others_cpu_pct']}% of the CPUs): its seconds are noise; rerun on an idle machine",
              file=sys.stderr)
    atomic_write(out / "load.json", json.dumps(load) + "\n")  # for --reuse
    return read_arm(out)


def read_arm(out: Path) -> dict[str, Any]:
    """A trained arm's metrics rows (with "wall") and the load recorded around it."""
    return {"rows": cumulative_time(read_metrics(out / "metrics.jsonl")),
            "load": json.loads((out / "load.json").read_text())}


def summarize(rows: list[dict], scratch: list[dict]) -> dict[str, Any]:
    """An arm's figures against the same seed's scratch rows (DEFINITIONS)."""
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    target, final = [r["val_loss"] for r in scratch if "val_loss" in r][-1], vals[-1]
    reach_flops, reach_wall = first_reach(rows, target, "flops"), first_reach(rows, target, "wall")
    train_rows = [r for r in rows if "event" not in r]

    def reverse(key: str) -> float | None:  # scratch's `key` to reach the arm's final loss / the arm's total
        reach = first_reach(scratch, final, key)
        return reach / train_rows[-1][key] if reach else None

    return {
        "final_val_loss": final,
        "final_gap": final - target,
        "flops": train_rows[-1]["flops"],
        "seconds": train_rows[-1]["wall"],
        "flops_to_reach": reach_flops,
        "flops_speedup": scratch[-1]["flops"] / reach_flops if reach_flops else None,
        "seconds_to_reach": reach_wall,
        "seconds_speedup": scratch[-1]["wall"] / reach_wall if reach_wall else None,
        "reverse_ratio": reverse("flops"),
        "reverse_seconds_ratio": reverse("wall"),
        "bumps": [{k: b[k] for k in ("stage", "ramp_steps", "loss_before", "loss_bump", "val_loss_before",
                                     "val_loss_bump")} for b in rows if b.get("event") == EVENT],
    }


def _mean(per_seed: list[dict[str, Any]], key: str) -> float | None:
    xs = [s[key] for s in per_seed if s.get(key) is not None]
    return mean(xs) if len(xs) == len(per_seed) else None  # a seed that never got there: no mean


def plot(curves: dict[str, list[list[dict]]], path: Path, compute: list[list[list[dict]]]) -> None:
    """Validation loss vs FLOPs and vs seconds, every arm and seed; with the compute arms, the best-scratch
    envelope of each seed (the lowest loss any from-scratch size had reached by each FLOPs)."""
    import matplotlib  # heavy optional dependency: imported where it is used

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    vals = [[r["val_loss"] for r in rows if "val_loss" in r] for runs in curves.values() for rows in runs]
    tails = [v for run in vals for v in run[len(run) // 3 :]]  # the y range: the last two thirds of training
    for i, (arm, runs) in enumerate(curves.items()):
        for seed, rows in enumerate(runs):
            pts = [r for r in rows if "val_loss" in r]
            for ax, key in zip(axes, ("flops", "wall")):
                ax.plot([r[key] for r in pts], [r["val_loss"] for r in pts], color=f"C{i}",
                        linestyle="-" if seed == 0 else "--", label=arm if seed == 0 else None)
    for seed in range(len(compute[0]) if compute else 0):
        x, y = C.envelope([runs[seed] for runs in compute])
        axes[0].plot(x, y, color="black", linewidth=2.5, alpha=0.35, linestyle="-" if seed == 0 else "--",
                     label="best scratch (envelope)" if seed == 0 else None)
    axes[0].set_xlabel("training FLOPs")
    axes[1].set_xlabel("wall-clock seconds")
    axes[0].set_ylabel("validation loss")
    for ax in axes:
        ax.grid(alpha=0.3)
    spread = max(tails) - min(tails)
    axes[0].set_ylim(min(tails) - 0.1 * spread, max(tails) + 0.1 * spread)
    axes[0].legend(title="arm (dashed: 2nd seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(seeds: list[dict[str, Any]], key: str, pattern: str) -> str:
    """The seeds' mean of a figure (each seed in brackets), or "never" when a seed never got there."""
    avg = _mean(seeds, key)
    if avg is None:
        return "never"
    each = " (" + " / ".join(pattern.format(s[key]) for s in seeds) + ")" if len(seeds) > 1 else ""
    return pattern.format(avg) + each


def markdown_table(result: dict[str, Any]) -> str:
    """The README's table: one row per arm, seed means with the seeds in brackets."""
    best = "vs_best_scratch" in next(iter(result["arms"].values()))["per_seed"][0]
    lines = ["| method | final val loss | vs scratch | FLOPs speedup | wall-clock speedup | reverse ratio FLOPs "
             "| reverse ratio seconds | " + ("vs best scratch | FLOPs speedup vs best scratch | " if best else "")
             + "val loss bump at each growth |", "|---" * (10 if best else 8) + "|"]
    for arm, r in result["arms"].items():
        seeds = r["per_seed"]
        bumps = " / ".join(", ".join(f"{b['val_loss_bump']:+.3f}" for b in s["bumps"]) for s in seeds if s["bumps"])
        vs_best = (f"{_fmt(seeds, 'vs_best_scratch', '{:+.3f}')} | {_fmt(seeds, 'best_scratch_speedup', '{:.2f}x')} | "
                   if best else "")
        lines.append(f"| {arm} | {_fmt(seeds, 'final_val_loss', '{:.4f}')} | {_fmt(seeds, 'final_gap', '{:+.3f}')} "
                     f"| {_fmt(seeds, 'flops_speedup', '{:.2f}x')} | {_fmt(seeds, 'seconds_speedup', '{:.2f}x')} "
                     f"| {_fmt(seeds, 'reverse_ratio', '{:.2f}x')} | {_fmt(seeds, 'reverse_seconds_ratio', '{:.2f}x')} "
                     f"| {vs_best}{bumps} |")
    if best:
        arms = [s["best_scratch_arm"] for s in next(iter(result["arms"].values()))["per_seed"]]
        lines.append(f"\nBest scratch (lowest final loss for {result['plan_flops']:.3g} FLOPs): {' / '.join(arms)}.")
    if "planner" in result:
        p = result["planner"]
        std = f" ± {p['predicted_std']:.3f}" if p.get("predicted_std") else ""
        lines.append(f"\nPlanner: predicted final loss {p['predicted_final_loss']:.4f}{std}, measured "
                     + " / ".join(f"{a:.4f} ({e:+.2%})" for a, e in zip(p["actual_final_loss"], p["rel_error"]))
                     + "; schedule " + " -> ".join(f"{st['shape']['d_model']}x{st['shape']['n_layers']} "
                                                    f"({st['steps']} steps)" for st in p["stages"]) + ".")
    return "\n".join(lines) + "\n"


def versus_best(rows: list[dict], best: list[dict]) -> dict[str, Any]:
    """An arm's figures against the same seed's best compute-matched scratch run (DEFINITIONS)."""
    target = [r["val_loss"] for r in best if "val_loss" in r][-1]
    final = [r["val_loss"] for r in rows if "val_loss" in r][-1]
    reach = first_reach(rows, target, "flops")
    return {"best_scratch_final": target, "vs_best_scratch": final - target,
            "best_scratch_speedup": best[-1]["flops"] / reach if reach else None}


def parse_args() -> tuple[argparse.Namespace, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-growth"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--arms", default=",".join(ARMS),
                    help=f"comma-separated subset of {','.join(ARMS)} ('compute' = the scratch-*x arms)")
    ap.add_argument("--gstack-factor", type=int, default=2)
    ap.add_argument("--hyperclone-factor", type=int, default=2)
    ap.add_argument("--plan-stages", type=int, default=3, help="the planned arm's most stages (flm plan grow --stages)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and 60 steps per arm (a smoke run)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the arms already trained in --work (same config and seeds) and train only the others")
    ap.add_argument("--name", help="results file stem (default growth_speedup, growth_speedup_quick with --quick)")
    return ap.parse_args(), ap.error  # ap.error: one line, exit 2


def train_arms(args: argparse.Namespace, plan: RunConfig, arms: list[str]) -> tuple[dict, dict, dict]:
    """Train (or, with --reuse, read back) every arm at every seed; the planned arm's config comes from a fit
    on the first seed's from-scratch arms. Returns the runs, the configs and the planner's record."""
    factors = {"gstack": args.gstack_factor, "hyperclone": args.hyperclone_factor}
    configs = {(a, s): arm_config(plan, a, s, factors) for s in range(args.seeds) for a in arms
               if a != C.PLANNED}  # refuse early
    if not args.reuse:
        shutil.rmtree(args.work, ignore_errors=True)
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    planner: dict[str, Any] = {}
    for seed in range(args.seeds):
        for arm in arms:
            out = args.work / f"{arm}-seed{seed}"
            if arm == C.PLANNED and not planner:
                scratch_dirs = [args.work / f"{a}-seed0" for a in arms if a == "scratch" or a in C.FIT_SIZES]
                bumps = C.measured_bumps(runs["msg", 0]["rows"], plan)
                law = C.fit_law(scratch_dirs, bumps, args.work / "fit.json")
                cfg, planner = C.planned(plan, law, plan_flops(plan), args.plan_stages)
                planner["fit_runs"] = [str(d) for d in scratch_dirs]
                configs.update({(arm, s): arm_config(plan, arm, s, factors, cfg) for s in range(args.seeds)})
            trained = args.reuse and (out / "load.json").is_file()  # written last: the arm finished
            if trained and arm == C.PLANNED:  # a plan of another fit: train the new one
                trained = C.same_stages(read_config(out / "config.toml"), configs[arm, seed])
            runs[arm, seed] = read_arm(out) if trained else run_arm(configs[arm, seed], arm, out)
    return runs, configs, planner


def main() -> None:
    args, error = parse_args()
    wanted = [a for item in args.arms.split(",") for a in ALIASES.get(item, [item])]
    unknown = sorted(set(wanted) - set(ARMS))
    if unknown:
        error(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ARMS)} or 'compute'")
    arms = [a for a in ARMS if a in wanted]  # scratch first: the others are measured against it
    if "scratch" not in arms:
        error("--arms must include scratch: every figure is relative to it")
    if C.PLANNED in arms and not {*C.FIT_SIZES, "msg"} <= set(arms):
        error("--arms planned needs 'compute' and 'msg': the planner's loss model is fitted on the compute arms, "
              "with msg's measured bumps")

    plan = load_config(args.config, args.overrides)
    if args.quick:
        plan = config_from_dict(quick_plan(config_to_dict(plan)), where="--quick plan")
    runs, configs, planner = train_arms(args, plan, arms)

    final = resolve_stages(plan)[-1].model
    result: dict[str, Any] = {"config": args.config, "quick": args.quick, "seeds": args.seeds,
                              "final_shape": final.shape(), "final_params": final.num_params(),
                              "plan_flops": plan_flops(plan), "definitions": DEFINITIONS, "arms": {}}
    compute = {a: [runs[a, s]["rows"] for s in range(args.seeds)] for a in arms if a in C.SIZES}
    best = [C.best_scratch(compute, s) for s in range(args.seeds)] if compute else []
    for arm in arms:
        scratch = [runs["scratch", s]["rows"] for s in range(args.seeds)]
        per_seed = [summarize(runs[arm, s]["rows"], scratch[s]) | {"load": runs[arm, s]["load"]}
                    | (versus_best(runs[arm, s]["rows"], best[s][1]) | {"best_scratch_arm": best[s][0]}
                       if best else {})
                    for s in range(args.seeds)]
        first = configs[arm, 0]
        result["arms"][arm] = {
            "stages": [{"shape": st.model.shape(), "steps": st.steps,
                        "method": st.growth.method if st.growth else None} for st in resolve_stages(first)],
            "tokens": runs[arm, 0]["rows"][-1]["tokens"],
            "mean": {k: _mean(per_seed, k) for k in ("final_val_loss", "final_gap", "flops_speedup",
                                                     "seconds_speedup", "reverse_ratio", "reverse_seconds_ratio",
                                                     "vs_best_scratch", "best_scratch_speedup")},
            "per_seed": per_seed,
        }
    if planner:
        actual = [s["final_val_loss"] for s in result["arms"][C.PLANNED]["per_seed"]]
        planner["actual_final_loss"] = actual
        planner["rel_error"] = [planner["predicted_final_loss"] / a - 1 for a in actual]
        result["planner"] = planner
    result["tokens_per_param"] = result["arms"]["scratch"]["tokens"] / final.num_params()
    RESULTS.mkdir(exist_ok=True)
    name = args.name or ("growth_speedup_quick" if args.quick else "growth_speedup")
    plot({arm: [runs[arm, s]["rows"] for s in range(args.seeds)] for arm in arms}, RESULTS / f"{name}.png",
         list(compute.values()))
    atomic_write(RESULTS / f"{name}.json", json.dumps(result, indent=1) + "\n")
    atomic_write(RESULTS / f"{name}.md", markdown_table(result))
    print(json.dumps({arm: r["mean"] for arm, r in result["arms"].items()} | (
        {"planner": {k: planner[k] for k in ("predicted_final_loss", "actual_final_loss", "rel_error")}}
        if planner else {})))


if __name__ == "__main__":
    main()
