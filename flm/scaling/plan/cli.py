"""`flm plan`: tools for growth plans ([[stages]] of a run config). `flm plan search` finds the schedule that
reaches the lowest validation loss under a fixed FLOP budget on a small proxy (flm.scaling.plan_search);
`flm plan layout` ranks parallel layouts by the performance model (flm.scaling.perf); `flm plan grow` and
`flm plan fit` plan when to grow from a fitted loss model (flm.scaling.grow_planner, flm.scaling.loss_model)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flm.cli_args import add_command, add_command_group, add_config_args, load_run_config, positive

if TYPE_CHECKING:
    from flm.scaling.grow_planner import GrowPlan, Segment
    from flm.scaling.loss_model import LossModel
    from flm.scaling.plan_search import Trial



# ----- plan search ------------------------------------------------------------------------------------------


def _plot_trials(trials: list[Trial], path: Path) -> None:
    """Final validation loss of every candidate against the first stage's share, one marker per ramp share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    done = [t for t in trials if t.val_loss is not None and math.isfinite(t.val_loss)]
    for ramp in sorted({t.choice.ramp_share for t in done if t.choice.ramp_share is not None}):
        pts = [t for t in done if t.choice.ramp_share == ramp]
        ax.scatter([t.choice.first_share for t in pts], [t.val_loss for t in pts], label=f"ramp {ramp:g} of stage")
    given = [t for t in done if t.choice.first_share is None]
    if given:
        ax.axhline(given[0].val_loss, color="k", ls="--", lw=1, label="the plan as given")
    ax.set_xlabel("share of the FLOP budget in the first stage")
    ax.set_ylabel("final validation loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_plan_search(args: argparse.Namespace) -> int:
    """search growth schedules under a fixed FLOP budget on a small proxy; write the best as a config

    Give a small proxy of your plan (the same growth factors at a width that trains in minutes, e.g.
    configs/demo.toml). Each candidate keeps the plan's final shape and changes how it gets there: the share
    of the budget in the first stage, each growth's ramp length, the LR at growth (lr_mode 'inherit' with an
    LR scale at each growth, or 'restart': each stage warms up again and decays on its own, the LR rewind of
    the MSG paper), the order of the growths when they grow different dimensions, the first stage's shape
    (as given, or its width x 3/4 or 1/2 in whole heads and/or its depth x 1/2, the first growth then growing
    those back) and the growth method of each boundary (msg, net2net; gstack where it grows depth alone by
    an integer factor, hyperclone where it grows width alone by integer factors). The grid of all of these
    (2,640 schedules for configs/demo.toml) is counted as it starts; --trials draws a seeded subset. Steps per stage
    follow from the budget (default: the plan's own model FLOPs). The plan as given is always the first
    candidate. Every candidate is one `flm run` in OUT/trials/<tag> (an interrupted search resumes);
    OUT/search.jsonl ranks them, OUT/best.toml is the winner's config and OUT/search.png plots them.
    """
    from rich.console import Console
    from rich.table import Table

    from flm.config import check_training_source
    from flm.scaling.plan_search import choices, grid, plan_flops, run_search, save_best

    cfg = load_run_config(args)
    check_training_source(cfg, str(args.config))
    budget = plan_flops(cfg) * args.budget_scale
    out = Path(args.out)
    n = len(choices(cfg, args.trials, args.seed, budget))  # checks the plan before anything trains
    print(f"searching {n} of {len(grid(cfg)) + 1} schedules of {cfg.name} at {budget:.3g} FLOPs each, into {out}")

    def say(t: Trial) -> None:
        print(f"  {t.choice.tag}: steps {t.steps}, val loss {t.val_loss:.4f}", flush=True)

    ranked = run_search(cfg, out, args.trials, budget, args.seed, on_trial=say)
    table = Table(title=f"{len(ranked)} schedules at {budget:.3g} FLOPs (best first)")
    for col in ("schedule", "first stage", "methods", "LR at growth", "steps per stage", "FLOPs", "val loss"):
        table.add_column(col)
    for t in ranked:
        c = t.choice
        start = f"{c.start[0]} x {c.start[1]}" if c.start else f"{cfg.model.d_model} x {cfg.model.n_layers}"
        methods = " / ".join(c.methods or [st.grow.method for st in cfg.stages[1:] if st.grow])
        mode = c.lr_mode or cfg.lr_mode
        lr = mode + (f" x{c.lr_scale:g}" if c.lr_scale != 1.0 else "")
        table.add_row(c.tag, start, methods, lr, " / ".join(map(str, t.steps)), f"{t.flops:.3g}", f"{t.val_loss:.4f}")
    Console().print(table)
    save_best(cfg, ranked[0], budget, out / "best.toml")
    _plot_trials(ranked, out / "search.png")
    given = next((t for t in ranked if t.choice.first_share is None), None)
    gain = f" ({given.val_loss - ranked[0].val_loss:+.4f} vs the plan as given)" if given else ""
    print(f"best: {ranked[0].choice.tag}, val loss {ranked[0].val_loss:.4f}{gain}; wrote {out / 'best.toml'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    psub = add_command_group(sub, "plan", help="growth-plan tools: search a plan's schedule on a small proxy, "
                             "rank parallel layouts",
                             description="Tools for growth plans ([[stages]] of a run config).")
    p = add_command(psub, "search", cmd_plan_search)
    add_config_args(p, "run config with [[stages]] (a small proxy of your plan), e.g. configs/demo.toml")
    p.add_argument("--out", required=True, metavar="DIR", help="search folder (trials, search.jsonl, best.toml)")
    p.add_argument("--trials", type=int, default=8, help="candidates, the plan as given included (default 8)")
    p.add_argument("--budget-scale", type=positive, default=1.0,
                   help="FLOP budget as a multiple of the plan's own (default 1; < 1 for a quicker search)")
    p.add_argument("--seed", type=int, default=0, help="which candidates are drawn from the grid (default 0)")
    _register_plan_layout(psub)
    _register_plan_grow(psub)  # flm plan grow, flm plan fit


# ----- plan layout -----------------------------------------------------------------------------------------


def cmd_plan_layout(args: argparse.Namespace) -> int:
    """rank TP·PP·DP layouts of each stage by modelled step time, on the GPUs you have

    For every stage (or --stage): enumerate tensor, pipeline and data parallel degrees, micro-batch size,
    pipeline schedule (GPipe, 1F1B, interleaved), sequence parallelism and activation checkpointing; drop what
    flm cannot run and what the memory planner says does not fit 90% of the device; rank the rest by the
    performance model's step time (docs/performance.md) and print the fastest with their breakdown (compute,
    recompute, TP/PP/DP communication, bubble, optimizer), the binding reason, and where the configured
    layout stands. --write saves the config with each stage's best layout. Example:
    flm plan layout configs/flm-101b.toml --gpus 192 --gpu A800 (its [cost] sets ZeRO-1 and the network)
    """
    from flm.hardware import load_catalog
    from flm.progress import progress_bar
    from flm.scaling.perf import layout, report
    from flm.scaling.perf.calibrate import load_calibration
    from flm.scaling.perf.step import CONSTANTS

    cfg = load_run_config(args)
    catalog = load_catalog(args.hardware)
    gpu, net = layout.resolve_hardware(catalog, args.gpu or cfg.cost.gpu, args.network or cfg.cost.network,
                                       "--gpu" if args.gpu else "cost.gpu")
    consts = load_calibration(args.calibrate, gpu.peak_tflops) if args.calibrate else CONSTANTS
    dp_mode = args.dp_mode or cfg.cost.dp_mode
    searches = []
    for st in layout.pick_stages(cfg, args.stage):
        n = layout.stage_gpu_count(cfg, st, args.gpus)

        def run(tick, st=st, n=n):
            return layout.search_stage(cfg, st, n, gpu, net, dp_mode, consts, tick)

        searches.append(layout.timed(run, lambda total, st=st: progress_bar(f"layouts of {st.name}", total)))
    if args.write:
        layout.write_best(cfg, searches, args.write)
    if args.json:
        print(json.dumps({"constants": consts.__dict__, "stages": [s.to_dict(args.top) for s in searches]},
                         indent=2))
    else:
        report.render_text(searches, args.top)
        if args.write:
            print(f"wrote {args.write} (each searched stage's best layout)")
    return 0


def _register_plan_layout(psub: argparse._SubParsersAction) -> None:
    p = add_command(psub, "layout", cmd_plan_layout)
    add_config_args(p, "run config (TOML), e.g. configs/flm-101b.toml", example="train.batch_size=1024")
    p.add_argument("--gpus", type=int, help="GPUs (whole nodes); default: each stage's layout's count")
    p.add_argument("--gpu", help="GPU name from flm/hardware.toml (default cost.gpu), e.g. A800, H100")
    p.add_argument("--network", help="inter-node network from flm/hardware.toml (default: the GPU's)")
    p.add_argument("--hardware", metavar="FILE",
                   help="a TOML file adding GPUs or networks (keys as flm/hardware.toml)")
    p.add_argument("--stage", help="only this stage (1-based index or name)")
    p.add_argument("--dp-mode", choices=["fsdp", "zero1", "ddp"],
                   help="data parallelism: fsdp (flm's FSDP2), zero1 (Megatron's distributed optimizer), ddp "
                        "(default: cost.dp_mode, itself fsdp by default)")
    p.add_argument("--top", type=int, default=5, help="layouts shown per stage (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--calibrate", metavar="FILE", help="GEMM efficiency measured by scripts/gpu_check.sh")
    p.add_argument("--write", metavar="OUT.toml", help="save the config with each stage's best layout")


# ----- plan grow, plan fit ------------------------------------------------------------------------------


def _bumps(items: list[str]) -> dict[str, float]:
    from flm.errors import FlmError

    out = {}
    for item in items:
        kind, _, value = item.partition("=")
        try:
            out[kind.strip()] = float(value)
        except ValueError:
            raise FlmError(f"--bump {item!r}: give KIND=LOSS, e.g. --bump width=0.02 (kinds: width, ffn, heads, "
                           "depth)") from None
        if kind.strip() not in ("width", "ffn", "heads", "depth"):
            raise FlmError(f"--bump {item!r}: unknown growth kind; use width, ffn, heads or depth")
    return out


def cmd_plan_fit(args: argparse.Namespace) -> int:
    """fit the loss model L(N, D) = E + A/N^α + B/D^β on from-scratch runs; write it as a fit file

    Give finished `flm train` runs of several sizes (e.g. the width series of `flm predict`). Every logged
    validation loss after the first --skip share of a run's tokens is a point (N, D, loss); the fit is
    Hoffmann et al. 2022's Approach 3 (Huber loss on log-residuals, several starts), its uncertainty a
    bootstrap over runs. The fit file (JSON, docs/growth.md#the-planner) is what `flm plan grow --fit` reads.
    """
    from flm.errors import FlmError
    from flm.scaling.loss_model import fit_loss_model, points_from_runs, save_fit

    if not 0 <= args.skip < 1 or args.bootstrap < 0:
        raise FlmError(f"--skip {args.skip} / --bootstrap {args.bootstrap}: give a share in [0, 1) and a count >= 0")
    bumps = _bumps(args.bump)
    n, d, loss, runs = points_from_runs([Path(r) for r in args.runs], args.metric, args.count, args.skip)
    law = fit_loss_model(n, d, loss, runs=runs, bootstrap=args.bootstrap, count=args.count)
    law.bumps = bumps
    save_fit(law, Path(args.out))
    std = law.std()
    show = ", ".join(f"{k} = {getattr(law, k):.4g}" + (f" ± {std[k]:.2g}" if k in std else "")
                     for k in ("E", "A", "B", "alpha", "beta"))
    print(f"L(N, D) = E + A/N^alpha + B/D^beta on {law.points} points of {law.runs} runs: {show}")
    print(f"wrote {args.out}")
    return 0


def _summary(law: LossModel, plan: GrowPlan, kept: list[Segment], lrs: list[float], steps: list[int],
             ramps: list[int | None], scratch: dict[str, float], same_shape: float) -> dict[str, Any]:
    last = plan.segments[-1]
    return {
        "budget": plan.budget,
        "fit": law.source,
        "predicted_final_loss": plan.final_loss,
        "predicted_final_loss_std": law.loss_std(last.shape.n, last.d_end),
        "reaches_final_shape": plan.reaches_final,
        "stages": [{"shape": s.shape.model.shape() if s.shape.model else None, "n_params": s.shape.n,
                    "growth": list(s.shape.kinds), "steps": st, "ramp_steps": r, "lr_at_start": lr,
                    "flops_end": s.flops_end, "loss_start": s.loss_start, "loss_end": s.loss_end}
                   for s, st, r, lr in zip(kept, steps, ramps, lrs)],
        "best_scratch": scratch,
        "same_shape_scratch_loss": same_shape,
    }


def _plot_grow(law: LossModel, plan: GrowPlan, family: list, final_n: float, final_cost: float, path: Path) -> None:
    """The plan's predicted loss against FLOPs, with the best from-scratch envelope and the final shape's
    scratch curve."""
    import matplotlib
    import numpy as np

    from flm.scaling.grow_planner import predicted_curve

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fl, lo = predicted_curve(law, plan.segments)
    grid = np.geomspace(max(float(fl.min()), plan.budget * 1e-6), plan.budget, 200)
    env = np.min([law(n, grid / c) for n, c, _ in family], axis=0)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(fl, lo, "-", lw=2, label="growth plan (predicted)")
    ax.plot(grid, law(final_n, grid / final_cost), "--", color="0.5", label="final shape from scratch")
    ax.plot(grid, env, ":", color="k", label="best from scratch (envelope)")
    for s in plan.segments[1:]:
        ax.axvline(s.flops_start, color="0.8", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (model)")
    ax.set_ylabel("predicted loss")
    ax.set_ylim(min(lo.min(), env.min()) * 0.97, float(np.percentile(lo, 90)) * 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def cmd_plan_grow(args: argparse.Namespace) -> int:
    """plan a growth schedule from a loss model under a FLOP budget; write it as a config

    From CONFIG's first shape (or a smaller start: its width x 3/4 or 1/2, its depth x 1/2, when the model
    predicts it better; --keep-start: never) to its last stage's shape (or --final), choose the stage shapes
    (flm's growth operators: width with its heads, FFN, depth; growth by MSG) and the growth points (grow
    where the current shape's loss falls less per FLOP than the next shape's would), under --budget model
    FLOPs. The loss model is a fit file of `flm plan fit` (without --fit: Hoffmann et al. 2022's published
    fit, whose shape only carries over).
    Prints the stages with their steps, ramps and the LR at each growth, the predicted final loss, the best
    from-scratch model for the same FLOPs; --out writes the plan as a config for `flm run`. Assumptions:
    docs/growth.md#the-planner.
    """
    from flm.config import save_config
    from flm.errors import FlmError
    from flm.flops import flops_per_token
    from flm.scaling.grow_planner import (
        best_scratch_of,
        growth_lrs,
        kept_segments,
        parse_shape,
        plan_config,
        plan_growth,
        scratch_family,
    )
    from flm.scaling.loss_model import CHINCHILLA, load_fit
    from flm.scaling.predict import n_params
    from flm.stages import stage_models

    if not 0 < args.ramp_share <= 1:
        raise FlmError(f"--ramp-share {args.ramp_share}: give a share of the stage in (0, 1], e.g. 0.25")
    cfg = load_run_config(args)
    law = load_fit(Path(args.fit)) if args.fit else CHINCHILLA
    final = parse_shape(args.final, cfg.model) if args.final else stage_models(cfg)[-1]
    if final.shape() == cfg.model.shape():
        raise FlmError(f"{args.config or 'the config'} has no growth (one shape): give --final, e.g. "
                       f"--final d_model={2 * cfg.model.d_model},n_layers={cfg.model.n_layers}")
    plan = plan_growth(law, cfg, final, args.budget, args.stages, smaller_starts=not args.keep_start)
    planned = plan_config(cfg, plan, args.ramp_share)
    steps = [st.steps for st in planned.stages]
    ramps = [st.grow.ramp_steps if st.grow else None for st in planned.stages]
    family = scratch_family(final, cfg.seq_len, law.count)
    scratch = best_scratch_of(law, args.budget, family)
    final_n, final_cost = n_params(final, law.count), flops_per_token(final, cfg.seq_len)
    same = float(law(final_n, args.budget / final_cost))
    out = _summary(law, plan, kept_segments(cfg, plan), growth_lrs(planned), steps, ramps, scratch, same)
    out["smaller_start"] = planned.model.shape() != cfg.model.shape()
    if args.out:
        save_config(planned, args.out)
    if args.plot:
        _plot_grow(law, plan, family, final_n, final_cost, Path(args.plot))
    if args.json:
        print(json.dumps(out))
        return 0
    _print(out, args)
    return 0


def _print(out: dict[str, Any], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from flm.scaling.loss_model import CHINCHILLA

    if not args.fit:
        print(f"no --fit: using {CHINCHILLA.source}; fit your runs with `flm plan fit`")
    table = Table(title=f"growth plan for {out['budget']:.3g} FLOPs (predicted)")
    for col in ("stage", "d_model, layers, heads, d_ff", "growth", "steps", "ramp", "LR at start",
                "loss start -> end"):
        table.add_column(col)
    for i, s in enumerate(out["stages"], start=1):
        sh = s["shape"]
        table.add_row(str(i), f"{sh['d_model']}, {sh['n_layers']}, {sh['n_heads']}, {sh['d_ff']}",
                      "+".join(s["growth"]) or "-", str(s["steps"]), str(s["ramp_steps"] or "-"),
                      f"{s['lr_at_start']:.3g}", f"{s['loss_start']:.4f} -> {s['loss_end']:.4f}")
    Console().print(table)
    if out["smaller_start"]:
        print("the plan starts smaller than the config's model: that start is predicted to reach a lower loss "
              "(--keep-start starts at the config's model)")
    std = out["predicted_final_loss_std"]
    pm = f" ± {std:.2g}" if std is not None and math.isfinite(std) else ""
    b = out["best_scratch"]
    print(f"predicted final loss {out['predicted_final_loss']:.4f}{pm}"
          + ("" if out["reaches_final_shape"] else " (the budget ends before the final shape pays)"))
    print(f"best from scratch: {b['loss']:.4f} at N = {b['n']:.3g} on {b['tokens']:.3g} tokens "
          f"(nearest width {b['width']}: {b['width_loss']:.4f}); final shape from scratch: "
          f"{out['same_shape_scratch_loss']:.4f}")
    for what, path in (("config", args.out), ("plot", args.plot)):
        if path:
            print(f"wrote {what} {path}")


def _register_plan_grow(psub: argparse._SubParsersAction) -> None:
    p = add_command(psub, "grow", cmd_plan_grow)
    add_config_args(p, "run config: its model is the first stage, its last stage the final shape (or --final)")
    p.add_argument("--budget", type=float, required=True, metavar="FLOPS", help="model FLOPs of the plan, e.g. 3e13")
    p.add_argument("--final", metavar="SHAPE", help="final shape grown from the config's model, e.g. "
                   "d_model=256,d_ff=1024,n_layers=8 (unset keys stay; heads follow the width)")
    p.add_argument("--stages", type=int, default=3, help="at most this many stages (default 3)")
    p.add_argument("--fit", metavar="FILE", help="loss-model fit file of `flm plan fit`")
    p.add_argument("--ramp-share", type=float, default=0.25, help="each growth's ramp as a share of its stage")
    p.add_argument("--keep-start", action="store_true", help="start at the config's model (default: also try its "
                   "width x 3/4, 1/2 and depth x 1/2, kept only when predicted better)")
    p.add_argument("--out", metavar="OUT.toml", help="write the plan as a config for `flm run`")
    p.add_argument("--plot", metavar="PNG", help="plot the predicted loss vs FLOPs with the best-scratch envelope")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON line")
    f = add_command(psub, "fit", cmd_plan_fit)
    f.add_argument("runs", nargs="+", metavar="RUN", help="finished `flm train` run folders of several sizes")
    f.add_argument("--out", required=True, metavar="FIT.json", help="the fit file to write")
    f.add_argument("--metric", default="val_loss", help="the loss to fit (default val_loss)")
    f.add_argument("--count", choices=["non-embedding", "total"], default="non-embedding", help="what N counts")
    f.add_argument("--skip", type=float, default=0.25, help="drop each run's first share of tokens (default 0.25)")
    f.add_argument("--bootstrap", type=int, default=20, help="bootstrap refits over runs (default 20)")
    f.add_argument("--bump", action="append", default=[], metavar="KIND=LOSS",
                   help="measured loss bump of a growth kind (width, ffn, heads, depth), repeatable")
