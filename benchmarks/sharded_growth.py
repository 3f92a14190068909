"""Sharded checkpoints and sharded growth at a size no rank should hold whole: a model whose fp32 weights + AdamW
moments total >= 4 GB, sharded over 4 CPU ranks (FSDP2, dp4), saved with torch.distributed.checkpoint (in the
foreground and in the background), loaded back, then grown 2x in width into a tp2·dp2 layout the way ``flm
run`` does at a stage boundary: each rank builds the grown tensors its shards belong to one at a time
(``flm.growth.offline.GrownTensors``), so it never holds the old or the new model whole.

Reported: the peak RSS of each rank during the growth (a fresh set of processes, so nothing else counts)
against the bound (new weights + moments / 4) + the largest tensor + 30%; the growth time vs copying the old
checkpoint's bytes (``cp -r`` + sync); DCP save (sync; background: time until training could go on, and until
written) and load time per GB.

    .venv/bin/python benchmarks/sharded_growth.py           # >= 4 GB; about 10 minutes and ~20 GB of RAM
    .venv/bin/python benchmarks/sharded_growth.py --quick   # a small model, to check it runs

Prints one JSON line and writes benchmarks/results/sharded_growth.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from flm.checkpoint.model_state import ModelState
from flm.config import GrowthConfig, ModelConfig, ParallelConfig, TrainConfig
from flm.distributed.env import init_distributed, shutdown
from flm.distributed.parallel_model import ParallelModel
from flm.growth.offline import grown_tensors

RESULTS = Path(__file__).parent / "results" / "sharded_growth.json"
SHAPES = {  # (old model, growth)
    "full": (dict(vocab_size=8192, d_model=2048, n_layers=7, n_heads=16, d_ff=8192, max_seq_len=128),
             GrowthConfig(d_model=4096, d_ff=16384, ramp_steps=10)),
    "quick": (dict(vocab_size=1024, d_model=256, n_layers=2, n_heads=4, d_ff=1024, max_seq_len=64),
              GrowthConfig(d_model=512, d_ff=2048, ramp_steps=10)),
}


def _gb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9


def _timed(env, fn) -> float:
    if env.distributed:
        dist.barrier()
    t0 = time.perf_counter()
    fn()
    if env.distributed:
        dist.barrier()
    return time.perf_counter() - t0


def _optimizer(model: ParallelModel) -> torch.optim.Optimizer:
    """AdamW with moments in place (random, so nothing compresses or shortcuts), as after some training."""
    opt = torch.optim.AdamW(model.param_groups(1e-3, 0.1), lr=1e-3, fused=True)
    state = ModelState(model)
    names = [f"{kind}/{k}" for k, _ in state.sharded_state(opt)[0].items() for kind in ("exp_avg", "exp_avg_sq")]
    _, moments = state.sharded_state(opt, create=names)
    for t in moments.values():
        (t.to_local() if hasattr(t, "to_local") else t).normal_()
    return opt


def phase_save(shape: str, tmp: Path) -> dict:
    """dp4: build the old model, save its shards in the foreground and in the background, load them back."""
    cfg = ModelConfig(**SHAPES[shape][0])
    env = init_distributed(TrainConfig(device="cpu"), ParallelConfig())
    model = ParallelModel(cfg, env, TrainConfig(device="cpu"), seed=0)
    opt = _optimizer(model)
    out = {}
    state = ModelState(model)
    out["save_s"] = _timed(env, lambda: state.save_sharded(tmp / "old" / "model", tmp / "old" / "optim", opt))
    group = dist.new_group(backend="gloo")
    futures: list = []
    out["async_return_s"] = _timed(env, lambda: futures.extend(
        state.save_sharded(tmp / "async" / "model", tmp / "async" / "optim", opt, background=group)))
    t0 = time.perf_counter()
    for f in futures:
        f.result()
    dist.barrier()
    out["async_total_s"] = out["async_return_s"] + time.perf_counter() - t0
    out["load_s"] = _timed(env, lambda: state.load_sharded(tmp / "old" / "model", tmp / "old" / "optim", opt, 1))
    if env.is_main:
        (tmp / "save.json").write_text(json.dumps(out))
    shutdown(env)
    return out


def phase_grow(shape: str, tmp: Path) -> None:
    """tp2·dp2: the grown model's shards built tensor by tensor from the old shards; peak RSS per rank."""
    old_cfg, growth = ModelConfig(**SHAPES[shape][0]), SHAPES[shape][1]
    env = init_distributed(TrainConfig(device="cpu"), ParallelConfig(tp=2))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    plan, weights, moments = grown_tensors(tmp / "old", old_cfg, growth, seed=1)
    model = ParallelModel(plan.new, env, TrainConfig(device="cpu"), seed=1, state=weights,
                          growth=plan.mask_state())
    opt = torch.optim.AdamW(model.param_groups(1e-3, 0.1), lr=1e-3, fused=True)
    assert moments is not None
    ModelState(model).load_optim_state(opt, moments, 1)
    dist.barrier()
    grow_s = time.perf_counter() - t0
    save_s = _timed(env, lambda: ModelState(model).save_sharded(tmp / "new" / "model", tmp / "new" / "optim", opt))
    rss = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, base / 1e6], dtype=torch.float64)
    every = [torch.zeros_like(rss) for _ in range(env.world_size)]
    dist.all_gather(every, rss)
    if env.is_main:
        largest = max(t.numel() for t in (torch.empty(tp.shape, device="meta") for tp in plan.tensors)) * 4
        (tmp / "grow.json").write_text(json.dumps({
            "grow_s": grow_s, "grown_save_s": save_s, "peak_rss_gb_per_rank": [float(r[0]) for r in every],
            "rss_gb_at_start_per_rank": [float(r[1]) for r in every], "largest_tensor_gb": largest / 1e9,
            "new_params": plan.new.num_params(),
        }))
    shutdown(env)


def _torchrun(phase: str, shape: str, tmp: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", __file__,
           "--phase", phase, "--shape", shape, "--tmp", str(tmp)]
    subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, timeout=3600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small model, to check that it runs")
    ap.add_argument("--phase", choices=["save", "grow"], help=argparse.SUPPRESS)
    ap.add_argument("--shape", default="full", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        (phase_save if args.phase == "save" else phase_grow)(args.shape, Path(args.tmp))
        return
    shape = "quick" if args.quick else "full"
    with tempfile.TemporaryDirectory(prefix="flm-sharded-growth-", dir=os.environ.get("TMPDIR", "/tmp")) as d:
        tmp = Path(d)
        _torchrun("save", shape, tmp)
        old_gb = _gb(tmp / "old")
        t0 = time.perf_counter()
        shutil.copytree(tmp / "old", tmp / "copy")
        os.sync()
        copy_s = time.perf_counter() - t0
        shutil.rmtree(tmp / "copy")
        shutil.rmtree(tmp / "async")
        _torchrun("grow", shape, tmp)
        saved, grown = json.loads((tmp / "save.json").read_text()), json.loads((tmp / "grow.json").read_text())
        new_gb = _gb(tmp / "new")
    bound = (new_gb / 4 + grown["largest_tensor_gb"]) * 1.3
    result = {
        "benchmark": "sharded_growth", "shape": shape, "old_model": SHAPES[shape][0], "ranks": 4,
        "old_checkpoint_gb": old_gb, "new_checkpoint_gb": new_gb,
        "save_s_per_gb": saved["save_s"] / old_gb, "background_save_return_s_per_gb": saved["async_return_s"] / old_gb,
        "background_save_total_s_per_gb": saved["async_total_s"] / old_gb, "load_s_per_gb": saved["load_s"] / old_gb,
        "grow_s": grown["grow_s"], "copy_old_checkpoint_s": copy_s, "grow_vs_copy": grown["grow_s"] / copy_s,
        "grown_save_s_per_gb": grown["grown_save_s"] / new_gb,
        "peak_rss_gb_per_rank": grown["peak_rss_gb_per_rank"], "rss_bound_gb": bound,
        "within_bound": max(grown["peak_rss_gb_per_rank"]) < bound, "largest_tensor_gb": grown["largest_tensor_gb"],
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
