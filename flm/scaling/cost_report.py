"""What `flm cost` prints: the plan's per-stage table (rich text or Markdown) and its summary lines."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from flm.scaling.cost import PlanCost, StageCost
from flm.train.schedule import StageLR

_PREFIXES = (
    (1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""),
    (1e-3, "m"), (1e-6, "µ"),
)


def _si(x: float, unit: str, digits: int = 2) -> str:
    """1.2e22 -> '12.00 Z<unit>'; small values keep three significant digits."""
    for factor, prefix in _PREFIXES:
        if abs(x) >= factor:
            shown = f"{x / factor:.{digits}f}" if factor >= 1 else f"{x / factor:.3g}"
            return f"{shown} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def fmt_count(n: float) -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}"
    return f"{n:.0f}"


def fmt_time(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.2f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.3g} s"


def _num(x: float) -> str:
    """Thousands separators for big numbers, three significant digits for small ones."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def fmt_dollars(x: float) -> str:
    return f"${_num(x)}"


def fmt_energy(kwh: float | None) -> str:
    return "n/a" if kwh is None else _si(kwh * 1000.0, "Wh", 1)


def fmt_co2(kg: float | None) -> str:
    if kg is None:
        return "n/a"
    if kg >= 1000:
        return f"{kg / 1000:.1f} t"
    return f"{kg:.3g} kg" if kg >= 1 else f"{kg * 1000:.3g} g"


def _row(s: StageCost) -> list[str]:
    return [
        s.name,
        f"{s.n_layers}×{s.d_model}",
        fmt_count(s.params),
        fmt_count(s.tokens),
        f"{s.n_gpus}",
        f"{s.tp}·{s.pp}·{s.dp}",
        f"{s.tflops_per_gpu:.4g}" + {"measured": "", "modelled": "~", "mfu": "*"}[s.throughput],
        f"{s.mfu:.1%}",
        _si(s.model_flops, ""),
        fmt_time(s.seconds),
        _num(s.gpu_hours),
        fmt_dollars(s.dollars),
        fmt_energy(s.energy_kwh),
        fmt_co2(s.co2_kg),
    ]


HEADER = ["Stage", "L×d", "Params", "Tokens", "GPUs", "TP·PP·DP", "TFLOP/s", "MFU", "FLOPs", "Time",
          "GPU-hours", "Cost", "Energy", "CO2e"]


def _total_row(c: PlanCost) -> list[str]:
    t = c.total
    return ["total", "", "", fmt_count(t.tokens), "", "", "", "", _si(t.model_flops, ""), fmt_time(t.seconds),
            _num(t.gpu_hours), fmt_dollars(t.dollars), fmt_energy(t.energy_kwh), fmt_co2(t.co2_kg)]


def summary_lines(c: PlanCost) -> list[str]:
    hw, t, s = c.hardware, c.total, c.scratch
    tdp = f", {hw.tdp_watts:g} W" if hw.tdp_watts is not None else ""
    recompute = ", ".join(f"{st.recompute * st.n_layers:.0f}/{st.n_layers}" for st in c.stages)
    formula = "Narayanan et al. 2021" if c.formula == "narayanan" else "6N + attention"
    energy = f", {fmt_energy(t.energy_kwh)}, {fmt_co2(t.co2_kg)} CO2e" if t.energy_kwh is not None else ""
    reported = [st.reported_days for st in c.stages]
    beside = (f" ({c.reported_source}: {sum(d for d in reported if d is not None):.2f} d)"
              if c.reported_source and None not in reported else "")
    lines = [
        f"Growth plan: {fmt_time(t.seconds)} on {c.stages[-1].n_gpus} × {hw.gpu}, {_num(t.gpu_hours)} "
        f"GPU-hours, {fmt_dollars(t.dollars)}{energy}{beside}.",
        f"From scratch: {s.name.removesuffix(' (scratch)')} ({fmt_count(s.params)} params) on all "
        f"{fmt_count(s.tokens)} tokens at the last stage's throughput: {fmt_time(s.seconds)}, "
        f"{_num(s.gpu_hours)} GPU-hours, {fmt_dollars(s.dollars)}.",
        f"Saving: {fmt_time(s.seconds - t.seconds)} ({c.time_saved:.1%} of the time), a {c.speedup:.2f}x "
        f"speedup, {fmt_dollars(s.dollars - t.dollars)}.",
        f"Training FLOPs ({formula}): {_si(t.model_flops, 'FLOPs')} without recompute, "
        f"{_si(t.hardware_flops, 'FLOPs')} as run (blocks recomputed per stage: {recompute}), "
        f"{_si(t.full_recompute_flops, 'FLOPs')} with full recompute.",
        f"Assumptions: peak {hw.peak_tflops:.4g} TFLOP/s per device ({hw.peak_source}){tdp}, "
        f"${c.price_per_gpu_hour:g} per GPU-hour, PUE {c.pue:g}, {c.carbon_kg_per_kwh:g} kg CO2e/kWh, "
        f"sequence {c.seq_len}.",
    ]
    if any(st.throughput == "mfu" for st in c.stages):
        lines.append("* TFLOP/s implied by the MFU (no measured tflops_per_gpu for that stage).")
    for st in c.stages:
        if st.breakdown is not None:
            lines.append(_modelled_line(st) + _reported(st, c.reported_source))
        elif c.reported_source and (st.reported_tflops or st.reported_days):
            lines.append(f"Stage {st.name}{_reported(st, c.reported_source)}")
    if any(st.throughput == "modelled" for st in c.stages):
        lines.append("~ modelled by flm's performance model (docs/performance.md); a measured stages[i].tflops_per_gpu "
                     "overrides it.")
    return lines + [f"Note: {n}" for n in c.notes]


def _reported(s: StageCost, source: str | None) -> str:
    """cost.reported's figures beside the estimate: ' paper (...): 162 TFLOP/s, 9.63 d (modelled +10%, -14%);
    at its 162 TFLOP/s the steps take 9.16 d, 5% less than its days.' (what the steps do not account for)."""
    figures = [(f"{s.reported_tflops:.4g} TFLOP/s", s.tflops_per_gpu / s.reported_tflops - 1)
               if s.reported_tflops else None,
               (f"{s.reported_days:.4g} d", s.days / s.reported_days - 1) if s.reported_days else None]
    shown = [f for f in figures if f is not None]
    if not source or not shown:
        return ""
    what = {"measured": "measured", "modelled": "modelled", "mfu": "estimate"}[s.throughput]
    out = f" {source}: {', '.join(f for f, _ in shown)} ({what} {', '.join(f'{e:+.0%}' for _, e in shown)})"
    if s.reported_tflops and s.reported_days:  # the same FLOPs at the reported throughput
        steps = s.seconds * s.tflops_per_gpu / s.reported_tflops / 86400
        out += (f"; at its {s.reported_tflops:.4g} TFLOP/s the steps take {steps:.2f} d, "
                f"{1 - steps / s.reported_days:.0%} less than its days")
    return out + "."


def _modelled_line(s: StageCost) -> str:
    """Why a modelled stage takes its time: the step's breakdown by cause."""
    b = s.breakdown or {}
    parts = {"compute": "compute", "recompute": "recompute", "tp_comm": "TP comm", "pp_comm": "PP comm",
             "bubble": "bubble", "dp_comm": "DP comm", "optimizer": "optimizer"}
    shares = ", ".join(f"{name} {b['shares'][k]:.0%}" for k, name in parts.items() if b["shares"][k] >= 0.005)
    head = f"Stage {s.name} modelled"
    if s.throughput == "measured":
        modelled = b["hardware_flops"] / b["step"] / b["n_gpus"] / 1e12  # at the model's own recompute
        head = (f"Stage {s.name} measured {s.tflops_per_gpu:.4g} TFLOP/s per GPU; modelled {modelled:.4g} "
                f"({modelled / s.tflops_per_gpu - 1:+.0%})")
    gives = f", {s.tflops_per_gpu:.4g} TFLOP/s per GPU, {fmt_time(s.seconds)}" if s.throughput == "modelled" else ""
    return (f"{head}: {s.tp}·{s.pp}·{s.dp}, {b['microbatches']} micro-batches: {b['step']:.2f} s per step = "
            f"{shares}{gives}.")


def render_text(c: PlanCost) -> None:
    width = None if sys.stdout.isatty() else 200  # piped: never squeeze the table into 80 columns
    console = Console(width=width, highlight=False, markup=False, soft_wrap=True)
    table = Table(title="flm cost: growth plan", title_justify="left")
    for i, h in enumerate(HEADER):
        table.add_column(h, justify="left" if i < 2 else "right", no_wrap=i == 0)
    for s in c.stages:
        table.add_row(*_row(s))
    table.add_section()
    table.add_row(*_total_row(c), style="bold")
    table.add_row(*_row(c.scratch), style="dim")
    console.print(table)
    for line in summary_lines(c):
        console.print(line)


def render_markdown(c: PlanCost) -> str:
    rows = [*(_row(s) for s in c.stages), [f"**{x}**" if x else "" for x in _total_row(c)], _row(c.scratch)]
    align = ["---" if i < 2 else "---:" for i in range(len(HEADER))]
    out = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out + [""] + [f"- {line}" for line in summary_lines(c)]) + "\n"


def lr_lines(lrs: list[StageLR], lr_mode: str, decay_steps: int | None) -> list[str]:
    """Each stage's learning rate at its first step, after its warmup and at its last step."""
    horizon = f", cosine horizon {decay_steps:,} steps" if decay_steps else ""
    out = [f"Learning rate (lr_mode {lr_mode}{horizon}; the base LR, before μP's per-group factors):"]
    for s in lrs:
        warm = f" -> {s.after_warmup:.3e} after a {s.warmup:,}-step warmup" if s.warmup else ""
        out.append(f"  {s.name}: {s.first:.3e} at its start{warm} -> {s.last:.3e} at its end")
    return out
