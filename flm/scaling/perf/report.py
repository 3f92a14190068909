"""What `flm plan layout` prints: per stage the fastest layouts that fit, each with its step-time breakdown, and
where the configured layout stands and why (the per-cause difference to the best)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from flm.scaling.perf.layout import Candidate, LayoutSearch
from flm.scaling.perf.step import Breakdown

PART_NAMES = {"compute": "compute", "recompute": "recompute", "tp_comm": "TP comm", "pp_comm": "PP comm",
              "bubble": "bubble", "dp_comm": "DP comm", "optimizer": "optimizer"}


def difference(best: Breakdown, other: Breakdown) -> str:
    """``other`` minus ``best`` per cause, the largest first: 'DP comm +2.1 s, TP comm -0.8 s'."""
    diffs = [(p, getattr(other, p) - getattr(best, p)) for p in PART_NAMES]
    diffs = sorted((d for d in diffs if abs(d[1]) >= 0.005 * best.step), key=lambda d: -abs(d[1]))
    return ", ".join(f"{PART_NAMES[p]} {s:+.2f} s" for p, s in diffs) or "the same causes"


def _row(i: int, c: Candidate) -> list[str]:
    lay, t = c.layout, c.time
    shares = t.shares()
    return [str(i), f"{lay.tp}·{lay.pp}·{lay.dp}", str(lay.microbatch), str(t.microbatches),
            (lay.schedule if lay.schedule != "interleaved" else f"interleaved v={lay.virtual}") if lay.pp > 1 else "",
            "yes" if lay.sequence_parallel and lay.tp > 1 else "", c.activation_checkpointing,
            f"{t.step:.3g}", f"{t.tflops_per_gpu:.0f}", f"{t.mfu:.1%}", f"{c.memory_bytes / 2**30:.1f}",
            *(f"{shares[p]:.0%}" for p in PART_NAMES)]


HEADER = ["#", "TP·PP·DP", "micro", "m", "schedule", "SP", "checkpoint", "step s", "TFLOP/s", "MFU", "GiB",
          *PART_NAMES.values()]


def configured_lines(s: LayoutSearch) -> list[str]:
    c = s.configured
    if c is None:
        return ["The configured layout does not apply to these GPUs (its tp·pp·dp gives another count)."]
    lay, best = c.layout, s.ranked[0] if s.ranked else None
    rank = s.rank_of(lay.tp, lay.pp, lay.dp)
    where = f"ranks #{rank} of {len(s.best_per_layout())} TP·PP·DP" if rank else "does not fit in any variant"
    fits = "fits" if c.memory_bytes <= s.usable_bytes else "does NOT fit"
    lines = [f"Configured {lay.tp}·{lay.pp}·{lay.dp} ({c.activation_checkpointing} checkpointing, micro-batch "
             f"{lay.microbatch}) {where}; as configured it {fits} ({c.memory_bytes / 2**30:.1f} GiB), step "
             f"{c.time.step:.3g} s, {c.time.tflops_per_gpu:.0f} TFLOP/s per GPU, MFU {c.time.mfu:.1%}."]
    if best is not None and best.time.step < c.time.step:
        gap = c.time.step / best.time.step - 1
        lines.append(f"  as configured vs the best ({best.layout.tag()}): {gap:+.1%} step time: "
                     f"{difference(best.time, c.time)}.")
    same = next((k for k in s.ranked if (k.layout.tp, k.layout.pp, k.layout.dp) == (lay.tp, lay.pp, lay.dp)), None)
    if best is not None and same is not None and same is not best:
        lines.append(f"  its best variant ({same.layout.tag()}, {same.memory_bytes / 2**30:.1f} GiB) vs the best: "
                     f"{same.time.step / best.time.step - 1:+.1%}: {difference(best.time, same.time)}.")
    return lines


def render_text(searches: list[LayoutSearch], top: int) -> None:
    width = None if sys.stdout.isatty() else 200
    console = Console(width=width, highlight=False, markup=False, soft_wrap=True)
    for s in searches:
        title = (f"stage {s.stage} on {s.n_gpus} x {s.gpu.name} ({s.network.name}, data parallel as {s.dp_mode}): "
                 f"fastest layouts that fit {s.usable_bytes / 2**30:.1f} GiB")
        table = Table(title=title, title_justify="left")
        for i, h in enumerate(HEADER):
            table.add_column(h, justify="right" if i in (0, 2, 3) or i > 6 else "left")
        for i, c in enumerate(s.best_per_layout()[:top]):
            table.add_row(*_row(i + 1, c))
        console.print(table)
        console.print(f"{len(s.ranked)} variants fit, {s.too_big} do not, {s.invalid} refused by flm's layout "
                      f"checks. Binding: {s.binding()}.")
        for line in configured_lines(s):
            console.print(line)
        console.print()
