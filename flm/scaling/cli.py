"""`flm cost CONFIG`: price a growth plan (per stage, in total, and against training from scratch)."""

from __future__ import annotations

import argparse
import json
import sys

from flm.config import load_config
from flm.scaling.cost import PlanCost, StageCost, plan_cost

# --------------------------------------------------------------------------------------------- format


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
        f"{s.tflops_per_gpu:.4g}" + ("" if s.throughput == "measured" else "*"),
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
    lines = [
        f"Growth plan: {fmt_time(t.seconds)} on {c.stages[-1].n_gpus} × {hw.gpu}, {_num(t.gpu_hours)} "
        f"GPU-hours, {fmt_dollars(t.dollars)}{energy}.",
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
    return lines + [f"Note: {n}" for n in c.notes]


def render_text(c: PlanCost) -> None:
    from rich.console import Console
    from rich.table import Table

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


# ------------------------------------------------------------------------------------------------ CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cost",
        help="FLOPs, time, GPU-hours, dollars, energy and CO2 of a (growth) plan, vs training from scratch",
        description="Price a run config before buying GPUs. For every stage: parameters, tokens, GPUs, "
        "throughput, training FLOPs (Narayanan et al. 2021, the formula FLM-101B uses), time, GPU-hours, "
        "dollars, energy (GPU-hours x TDP x PUE) and CO2e; then the totals and the comparison with training "
        "the final model from scratch on all the tokens at the last stage's throughput. A stage's time is "
        "tokens x FLOPs/token / (GPUs x stages[i].tflops_per_gpu), or, without a measured throughput, "
        "tokens x model FLOPs/token / (GPUs x MFU x peak). Example: flm cost configs/flm-101b.toml",
    )
    p.add_argument("config", help="run config (TOML), e.g. configs/flm-101b.toml or configs/demo.toml")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set cost.n_gpus=64 (repeatable)",
    )
    p.add_argument("--gpu", help="device (cost.gpu): A100, A800, H100, H800, H200, or cpu (peak measured)")
    p.add_argument("--n-gpus", type=int, help="GPUs for stages whose layout leaves dp = -1 (cost.n_gpus)")
    p.add_argument("--peak-tflops", type=float, help="peak TFLOP/s per device (cost.peak_tflops)")
    p.add_argument("--mfu", type=float, help="model FLOPs utilization for stages without tflops_per_gpu")
    p.add_argument("--price", type=float, help="US dollars per GPU-hour (cost.price_per_gpu_hour)")
    p.add_argument("--formula", choices=["narayanan", "6n"], help="FLOPs per token formula (cost.formula)")
    p.add_argument(
        "--recompute", action=argparse.BooleanOptionalAction, default=None,
        help="whether training recomputes all activations; measured TFLOP/s then count the extra forward "
        "(cost.recompute; cost.recompute_layers, per stage, wins when set)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON (raw numbers, seconds and days)")
    out.add_argument("--markdown", action="store_true", help="print a Markdown table and summary")
    p.set_defaults(func=_cost)


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    flags = {
        "gpu": args.gpu, "n_gpus": args.n_gpus, "peak_tflops": args.peak_tflops, "mfu": args.mfu,
        "price_per_gpu_hour": args.price, "formula": args.formula, "recompute": args.recompute,
    }
    return [f"cost.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]


def _cost(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, [*args.overrides, *_flag_overrides(args)])
    c = plan_cost(cfg)
    if args.json:
        print(json.dumps(c.to_dict(), indent=2))
    elif args.markdown:
        sys.stdout.write(render_markdown(c))
    else:
        render_text(c)
    return 0
