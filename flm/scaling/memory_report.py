"""What `flm cost --memory` prints: bytes per device of every stage (rich text or Markdown) and the verdict."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from flm.scaling.memory import GIB, PlanMemory, StageMemory

HEADER = ["Stage", "TP·PP·DP", "dtype", "micro-batch", "in flight", "recompute", "params", "grads", "optimizer",
          "compute copies", "accum. grads", "activations", "total", "fits", "growth (full)", "growth (sharded)"]


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.1f}"


def _row(p: PlanMemory, s: StageMemory) -> list[str]:
    return [
        s.name, s.layout, s.dtype, f"{s.microbatch} x {s.microbatches}", f"{s.in_flight:g}",
        s.activation_checkpointing, _gib(s.params), _gib(s.grads), _gib(s.optimizer), _gib(s.compute_copies),
        _gib(s.accumulated_grads), _gib(s.activations), _gib(s.total), "yes" if p.fits(s) else "NO",
        _gib(s.growth_full), _gib(s.growth_sharded),
    ]


def summary_lines(p: PlanMemory) -> list[str]:
    fits = [s.name for s in p.stages if p.fits(s)]
    verdict = "every stage fits" if len(fits) == len(p.stages) else (
        f"{len(p.stages) - len(fits)} of {len(p.stages)} stage(s) do NOT fit")
    return [
        f"Device: {p.device}, {p.device_gib:g} GiB, {p.headroom:.0%} kept free (CUDA context, NCCL, fragmentation): "
        f"{p.usable / GIB:.1f} GiB usable per device; {verdict}.",
        "GiB per device on the fullest rank (first pipeline rank, data-parallel rank 0); micro-batch = sequences "
        "per micro-batch x micro-batches per step and data-parallel rank; total = params + grads + optimizer + "
        "compute copies + accumulated grads + activations (an upper bound: grads and activations peak in the "
        "same backward).",
        "growth (full): old + new model and AdamW moments as full fp32 tensors (each rank grows in host memory "
        "today); growth (sharded): the old and new layouts' shards of the same (growth in sharded form).",
    ]


def render_text(p: PlanMemory) -> None:
    width = None if sys.stdout.isatty() else 220
    console = Console(width=width, highlight=False, markup=False, soft_wrap=True)
    table = Table(title="flm cost --memory: GiB per device", title_justify="left")
    for i, h in enumerate(HEADER):
        table.add_column(h, justify="left" if i < 3 else "right", no_wrap=i == 0)
    for s in p.stages:
        table.add_row(*_row(p, s), style=None if p.fits(s) else "bold red")
    console.print(table)
    for line in summary_lines(p):
        console.print(line)


def render_markdown(p: PlanMemory) -> str:
    align = ["---" if i < 3 else "---:" for i in range(len(HEADER))]
    out = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(_row(p, s)) + " |" for s in p.stages]
    return "\n".join(out + [""] + [f"- {line}" for line in summary_lines(p)]) + "\n"
