"""flm's performance model (flm.scaling.perf) against published large-scale training runs.

Every row of flm.scaling.perf.published (FLM-101B's three stages, Megatron-LM's weak-scaling table, its
sequence-parallel + selective-recompute table, BLOOM-176B, OPT-175B, GLM-130B, Llama 3 405B) runs through
``step_time`` with the one global set of constants; the modelled TFLOP/s per GPU (hardware FLOPs when the
source counts recompute, model FLOPs when it reports MFU) is compared with the reported one. Also written: the
sensitivity of the errors to each constant (each moved to the ends of its plausible range, one at a time), and
FLM-101B's errors on each network its cluster may have had.

    .venv/bin/python benchmarks/perf_model.py        # a second, no GPU

Prints one JSON line; writes benchmarks/results/perf_model.json, perf_model.md (the README's table) and
perf_model.png (modelled vs reported).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, replace
from pathlib import Path

from flm.hardware import load_catalog
from flm.io import atomic_write
from flm.scaling.perf.published import Run, runs
from flm.scaling.perf.step import CONSTANTS, Constants, step_time, with_constants

OUT = Path(__file__).parent / "results"
RANGES = {  # the plausible range of each constant (docs/performance.md)
    "gemm_peak_fraction": (0.75, 0.85), "gemm_half_dim": (32.0, 128.0), "flash_efficiency": (0.4, 0.6),
    "hbm_efficiency": (0.7, 0.9), "link_efficiency": (0.65, 0.85), "network_efficiency": (0.7, 0.9),
    "dp_overlap": (0.0, 1.0),
}


def model_row(r: Run, c: Constants = CONSTANTS) -> dict:
    cat = load_catalog()
    b = step_time(r.shape, r.layout, r.batch, cat.gpu(r.gpu), cat.network(r.network), c)
    got = b.tflops_per_gpu if r.counts == "hardware" else b.model_tflops_per_gpu
    lay = r.layout
    return {"name": r.name, "gpu": r.gpu, "network": r.network, "n_gpus": lay.n_gpus,
            "layout": f"{lay.tp}·{lay.pp}·{lay.dp}", "batch": r.batch, "seq_len": r.shape.seq_len,
            "counts": r.counts, "reported_tflops": r.reported_tflops, "modelled_tflops": got,
            "error": got / r.reported_tflops - 1, "shares": b.shares(), "binding": b.binding(), "source": r.source,
            "assumed": r.assumed}


def summary(rows: list[dict]) -> dict:
    errs = [abs(r["error"]) for r in rows]
    flm = [r["error"] for r in rows if r["name"].startswith("FLM-101B")]
    return {"median_abs_error": statistics.median(errs), "max_abs_error": max(errs), "flm_101b_errors": flm}


def markdown(rows: list[dict], s: dict) -> str:
    out = ["| run | GPUs | TP·PP·DP | reported TFLOP/s/GPU | modelled | error | largest overhead | source |",
           "|---|---:|---|---:|---:|---:|---|---|"]
    for r in rows:
        kind = "HFU" if r["counts"] == "hardware" else "MFU"
        out.append(f"| {r['name']} | {r['n_gpus']:,} × {r['gpu']} | {r['layout']} | {r['reported_tflops']:.0f} "
                   f"({kind}) | {r['modelled_tflops']:.0f} | {r['error']:+.1%} | {r['binding']} | {r['source']} |")
    out.append("")
    out.append(f"Median absolute error {s['median_abs_error']:.1%}, largest {s['max_abs_error']:.1%}; FLM-101B "
               + " / ".join(f"{e:+.1%}" for e in s["flm_101b_errors"]) + ". One set of constants for every row: "
               + ", ".join(f"{k} {v:g}" for k, v in asdict(CONSTANTS).items()) + ".")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    groups = {"FLM-101B": "tab:red", "Megatron": "tab:blue", "BLOOM": "tab:green", "OPT": "tab:purple",
              "GLM": "tab:brown", "Llama": "tab:orange"}
    for prefix, color in groups.items():
        pts = [r for r in rows if r["name"].startswith(prefix)]
        ax.scatter([r["reported_tflops"] for r in pts], [r["modelled_tflops"] for r in pts], c=color, label=prefix)
    lo, hi = 100, 480
    ax.plot([lo, hi], [lo, hi], "k-", lw=1)
    for f in (0.85, 1.15):
        ax.plot([lo, hi], [lo * f, hi * f], "k:", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("reported TFLOP/s per GPU")
    ax.set_ylabel("modelled TFLOP/s per GPU (flm.scaling.perf)")
    ax.set_title("flm's performance model vs published runs (dotted: ±15%)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sensitivity() -> dict:
    out = {}
    for name, ends in RANGES.items():
        for v in ends:
            rows = [model_row(r, with_constants(**{name: v})) for r in runs()]
            out[f"{name}={v:g}"] = summary(rows)
    return out


def flm_networks() -> dict[str, list[float]]:
    """FLM-101B's errors on each network a DGX A800 cluster may have (the paper publishes none; its code's
    README recommends 400 or 800 Gb/s per node; the DGX's own is 8 x 200)."""
    flm = [r for r in runs() if r.name.startswith("FLM-101B")]
    return {net: [model_row(replace(r, network=net))["error"] for r in flm]
            for net in ("ib-2x200", "ib-4x200", "ib-hdr-8x200")}


def main() -> None:
    rows = [model_row(r) for r in runs()]
    s = summary(rows)
    OUT.mkdir(exist_ok=True)
    result = {"benchmark": "perf_model", "constants": asdict(CONSTANTS), **s, "rows": rows,
              "sensitivity": sensitivity(), "flm_101b_by_network": flm_networks()}
    atomic_write(OUT / "perf_model.json", json.dumps(result, indent=1) + "\n")
    atomic_write(OUT / "perf_model.md", markdown(rows, s))
    plot(rows, OUT / "perf_model.png")
    print(json.dumps({"benchmark": "perf_model", "runs": len(rows), **s}))


if __name__ == "__main__":
    main()
