"""What each 3D layout costs on this machine: tokens/s, MFU and peak RSS per rank for 1 process, dp4, tp2·dp2,
pp2·dp2 and tp2·pp2, on the same model and the same global batch, back to back in one run.

Each layout runs under ``torchrun`` (gloo on CPU) the trainer's own step: ``ParallelModel.forward_backward``
(FSDP2 over dp, DTensor tensor parallel, the pipeline schedule), global gradient clipping, fused AdamW. The
model is built on the meta device and materialised per rank, as ``flm train`` does; the batches are random
tokens (the data loader is not what is measured). Step times are the median over the measured steps after
warm-up; MFU is model FLOPs/s (flm.flops) over this machine's fp32 matmul peak, measured with all its cores
in the driver process (so 4 processes on 2 cores share one roof: the number says what the layout gets out
of the machine). Layouts run twice, in alternating order, and the better run of each is kept.

Be honest about what this is: 4 processes on 2 cores, gloo over loopback. Tensor parallelism pays an
all-reduce per block and the pipeline pays bubbles and send/recv; here those costs are measured, not hidden,
and the speed-ups a GPU cluster gets from TP/PP (memory per device, NVLink) cannot show.

    .venv/bin/python benchmarks/parallel_scaling.py          # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/parallel_scaling.py --quick  # a smaller model, fewer steps

Prints one JSON line and writes benchmarks/results/parallel_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from flm.config import ModelConfig, ParallelConfig, TrainConfig
from flm.distributed.env import init_distributed, shutdown
from flm.distributed.parallel_model import ParallelModel
from flm.flops import flops_per_token
from flm.hardware import measure_matmul_peak

RESULTS = Path(__file__).parent / "results" / "parallel_scaling.json"
LAYOUTS = {  # name -> (processes, [parallel] table)
    "1 process": (1, {}),
    "dp4": (4, {}),
    "tp2·dp2": (4, {"tp": 2}),
    "pp2·dp2": (4, {"pp": 2}),
    "tp2·pp2": (4, {"tp": 2, "pp": 2}),
}
SHAPES = {
    "full": {"model": dict(vocab_size=8192, d_model=256, n_layers=4, n_heads=8, d_ff=1024, max_seq_len=128),
             "batch": 16, "steps": 8, "warmup": 2},
    "quick": {"model": dict(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, d_ff=512, max_seq_len=64),
              "batch": 8, "steps": 4, "warmup": 1},
}


def worker(shape: dict, parallel: dict, out: Path) -> None:
    """One rank of one layout: the trainer's step on random global batches; rank 0 writes the timings."""
    cfg = ModelConfig(**shape["model"])
    train = TrainConfig(device="cpu")
    env = init_distributed(train, ParallelConfig(**parallel))
    model = ParallelModel(cfg, env, train, seed=0)
    opt = torch.optim.AdamW(model.param_groups(1e-3, 0.1), lr=1e-3, fused=True)
    batch, seq = shape["batch"], cfg.max_seq_len
    rows = batch // env.dp_size
    times = []
    for step in range(shape["warmup"] + shape["steps"]):
        tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(step))
        mine = tokens[env.dp_rank * rows : (env.dp_rank + 1) * rows]
        x, y, mask = mine[:, :-1], mine[:, 1:], torch.ones(rows, seq)
        t0 = time.perf_counter()
        model.forward_backward([(x, y, mask)], torch.tensor(float(batch * seq) / env.dp_size))
        model.clip_grad_norm_(1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if env.distributed:
            dist.barrier()
        times.append(time.perf_counter() - t0)
    rss = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024], dtype=torch.float64)
    per_rank = [torch.zeros_like(rss) for _ in range(env.world_size)]
    if env.distributed:
        dist.all_gather(per_rank, rss)
    else:
        per_rank = [rss]
    if env.is_main:
        out.write_text(json.dumps({"step_s": times[shape["warmup"]:], "rss_mib": [float(r) for r in per_rank]}))
    shutdown(env)


def run_layout(name: str, shape_name: str, tmp: Path) -> dict:
    procs, parallel = LAYOUTS[name]
    out = tmp / f"{len(os.listdir(tmp))}.json"
    cmd = [sys.executable, __file__, "--worker", json.dumps({"shape": shape_name, "parallel": parallel}), str(out)]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *cmd[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1" if procs > 1 else str(os.cpu_count() or 1)}
    subprocess.run(cmd, env=env, check=True, timeout=900, capture_output=True)
    return json.loads(out.read_text())


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def summarize(name: str, runs: list[dict], shape: dict, peak: float) -> dict:
    cfg = ModelConfig(**shape["model"])
    tokens = shape["batch"] * cfg.max_seq_len
    best = min(runs, key=lambda r: statistics.median(r["step_s"]))
    step = statistics.median(best["step_s"])
    tok_s = tokens / step
    return {
        "layout": name, "processes": LAYOUTS[name][0], "step_s": step, "tokens_per_s": tok_s,
        "mfu": tok_s * flops_per_token(cfg, cfg.max_seq_len) / peak,
        "peak_rss_mib_per_rank": max(best["rss_mib"]), "peak_rss_mib_all_ranks": sum(best["rss_mib"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smaller model and fewer steps")
    ap.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(args.worker[0])
        worker(SHAPES[spec["shape"]], spec["parallel"], Path(args.worker[1]))
        return
    shape_name = "quick" if args.quick else "full"
    shape = SHAPES[shape_name]
    peak = measure_matmul_peak("cpu", seconds=2.0)
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {name: [] for name in LAYOUTS}
    with tempfile.TemporaryDirectory() as tmp:
        for order in (list(LAYOUTS), list(reversed(LAYOUTS))):
            for name in order:
                print(f"{name} ...", file=sys.stderr, flush=True)
                runs[name].append(run_layout(name, shape_name, Path(tmp)))
    rows = [summarize(name, runs[name], shape, peak) for name in LAYOUTS]
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speed_vs_1_process"] = row["tokens_per_s"] / base
    result = {
        "benchmark": "parallel_scaling", "shape": shape_name, "model": shape["model"], "global_batch": shape["batch"],
        "cpu": cpu_model(), "cores": os.cpu_count(), "matmul_peak_gflops": peak / 1e9,
        "load_before": load_before, "load_after": os.getloadavg()[0], "torch": torch.__version__, "layouts": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
