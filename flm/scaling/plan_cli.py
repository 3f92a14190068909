"""`flm plan search CONFIG`: which schedule of a growth plan reaches the lowest validation loss under a fixed
FLOP budget, searched on a small proxy (flm.scaling.plan_search); writes the best plan as a config."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from flm.cli_args import add_command, add_command_group, add_config_args, load_run_config, positive
from flm.scaling import grow_cli
from flm.scaling.perf import layout_cli

if TYPE_CHECKING:
    from flm.scaling.plan_search import Trial


def _plot(trials: list[Trial], path: Path) -> None:
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


def _search(args: argparse.Namespace) -> int:
    """search growth schedules under a fixed FLOP budget on a small proxy; write the best as a config

    Give a small proxy of your plan (the same growth factors at a width that trains in minutes, e.g.
    configs/demo.toml). Each candidate keeps the plan's shapes and changes the schedule: the share of the
    budget in the first stage, each growth's ramp length, the LR scale at each growth (lr_mode 'inherit'),
    and the order of the growths when they grow different dimensions. Steps per stage follow from the budget
    (default: the plan's own model FLOPs). The plan as given is always the first candidate. Every candidate
    is one `flm run` in OUT/trials/<tag> (an interrupted search resumes); OUT/search.jsonl ranks them,
    OUT/best.toml is the winner's config and OUT/search.png plots them.
    """
    from rich.console import Console
    from rich.table import Table

    from flm.config import check_training_source
    from flm.scaling.plan_search import choices, plan_flops, run_search, save_best

    cfg = load_run_config(args)
    check_training_source(cfg, str(args.config))
    budget = plan_flops(cfg) * args.budget_scale
    out = Path(args.out)
    n = len(choices(cfg, args.trials, args.seed))  # checks the plan before anything trains
    print(f"searching {n} schedules of {cfg.name} at {budget:.3g} FLOPs each, into {out}")

    def say(t: Trial) -> None:
        print(f"  {t.choice.tag}: steps {t.steps}, val loss {t.val_loss:.4f}", flush=True)

    ranked = run_search(cfg, out, args.trials, budget, args.seed, on_trial=say)
    table = Table(title=f"{len(ranked)} schedules at {budget:.3g} FLOPs (best first)")
    for col in ("schedule", "steps per stage", "FLOPs", "val loss"):
        table.add_column(col)
    for t in ranked:
        table.add_row(t.choice.tag, " / ".join(map(str, t.steps)), f"{t.flops:.3g}", f"{t.val_loss:.4f}")
    Console().print(table)
    save_best(cfg, ranked[0], budget, out / "best.toml")
    _plot(ranked, out / "search.png")
    given = next((t for t in ranked if t.choice.first_share is None), None)
    gain = f" ({given.val_loss - ranked[0].val_loss:+.4f} vs the plan as given)" if given else ""
    print(f"best: {ranked[0].choice.tag}, val loss {ranked[0].val_loss:.4f}{gain}; wrote {out / 'best.toml'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    psub = add_command_group(sub, "plan", help="growth-plan tools: search a plan's schedule on a small proxy, "
                             "rank parallel layouts",
                             description="Tools for growth plans ([[stages]] of a run config).")
    p = add_command(psub, "search", _search)
    add_config_args(p, "run config with [[stages]] (a small proxy of your plan), e.g. configs/demo.toml")
    p.add_argument("--out", required=True, metavar="DIR", help="search folder (trials, search.jsonl, best.toml)")
    p.add_argument("--trials", type=int, default=8, help="candidates, the plan as given included (default 8)")
    p.add_argument("--budget-scale", type=positive, default=1.0,
                   help="FLOP budget as a multiple of the plan's own (default 1; < 1 for a quicker search)")
    p.add_argument("--seed", type=int, default=0, help="which candidates are drawn from the grid (default 0)")
    layout_cli.register(psub)
    grow_cli.register(psub)  # flm plan grow, flm plan fit
