"""`flm plan fit RUNS...` (the loss model L(N, D) of from-scratch runs, as a fit file) and `flm plan grow CONFIG`
(a growth plan from that model under a FLOP budget, written as a config). The logic is in
flm.scaling.loss_model and flm.scaling.grow_planner; this module parses, prints and plots."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flm.cli_args import add_command, add_config_args, load_run_config

if TYPE_CHECKING:
    from flm.scaling.grow_planner import GrowPlan, Segment
    from flm.scaling.loss_model import LossModel


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


def _fit(args: argparse.Namespace) -> int:
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


def _plot(law: LossModel, plan: GrowPlan, family: list, final_n: float, final_cost: float, path: Path) -> None:
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


def _grow(args: argparse.Namespace) -> int:
    """plan a growth schedule from a loss model under a FLOP budget; write it as a config

    From CONFIG's first shape to its last stage's shape (or --final), choose the stage shapes (flm's growth
    operators: width with its heads, FFN, depth) and the growth points (grow where the current shape's loss
    falls less per FLOP than the next shape's would), under --budget model FLOPs. The loss model is a fit file
    of `flm plan fit` (without --fit: Hoffmann et al. 2022's published fit, whose shape only carries over).
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

    if not 0 < args.ramp_share <= 1:
        raise FlmError(f"--ramp-share {args.ramp_share}: give a share of the stage in (0, 1], e.g. 0.25")
    cfg = load_run_config(args)
    law = load_fit(Path(args.fit)) if args.fit else CHINCHILLA
    final = parse_shape(args.final, cfg.model) if args.final else cfg.stage_models()[-1]
    if final.shape() == cfg.model.shape():
        raise FlmError(f"{args.config or 'the config'} has no growth (one shape): give --final, e.g. "
                       f"--final d_model={2 * cfg.model.d_model},n_layers={cfg.model.n_layers}")
    plan = plan_growth(law, cfg, final, args.budget, args.stages)
    planned = plan_config(cfg, plan, args.ramp_share)
    steps = [st.steps for st in planned.stages]
    ramps = [st.grow.ramp_steps if st.grow else None for st in planned.stages]
    family = scratch_family(final, cfg.seq_len, law.count)
    scratch = best_scratch_of(law, args.budget, family)
    final_n, final_cost = n_params(final, law.count), flops_per_token(final, cfg.seq_len)
    same = float(law(final_n, args.budget / final_cost))
    out = _summary(law, plan, kept_segments(cfg, plan), growth_lrs(planned), steps, ramps, scratch, same)
    if args.out:
        save_config(planned, args.out)
    if args.plot:
        _plot(law, plan, family, final_n, final_cost, Path(args.plot))
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


def register(psub: argparse._SubParsersAction) -> None:
    p = add_command(psub, "grow", _grow)
    add_config_args(p, "run config: its model is the first stage, its last stage the final shape (or --final)")
    p.add_argument("--budget", type=float, required=True, metavar="FLOPS", help="model FLOPs of the plan, e.g. 3e13")
    p.add_argument("--final", metavar="SHAPE", help="final shape grown from the config's model, e.g. "
                   "d_model=256,d_ff=1024,n_layers=8 (unset keys stay; heads follow the width)")
    p.add_argument("--stages", type=int, default=3, help="at most this many stages (default 3)")
    p.add_argument("--fit", metavar="FILE", help="loss-model fit file of `flm plan fit`")
    p.add_argument("--ramp-share", type=float, default=0.25, help="each growth's ramp as a share of its stage")
    p.add_argument("--out", metavar="OUT.toml", help="write the plan as a config for `flm run`")
    p.add_argument("--plot", metavar="PNG", help="plot the predicted loss vs FLOPs with the best-scratch envelope")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON line")
    f = add_command(psub, "fit", _fit)
    f.add_argument("runs", nargs="+", metavar="RUN", help="finished `flm train` run folders of several sizes")
    f.add_argument("--out", required=True, metavar="FIT.json", help="the fit file to write")
    f.add_argument("--metric", default="val_loss", help="the loss to fit (default val_loss)")
    f.add_argument("--count", choices=["non-embedding", "total"], default="non-embedding", help="what N counts")
    f.add_argument("--skip", type=float, default=0.25, help="drop each run's first share of tokens (default 0.25)")
    f.add_argument("--bootstrap", type=int, default=20, help="bootstrap refits over runs (default 20)")
    f.add_argument("--bump", action="append", default=[], metavar="KIND=LOSS",
                   help="measured loss bump of a growth kind (width, ffn, heads, depth), repeatable")
