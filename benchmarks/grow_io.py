"""Streaming growth of a checkpoint larger than comfortable: peak RSS and throughput vs `cp`.

Writes a random fp32 checkpoint (default d_model 2048, d_ff 8192, 15 layers: 3.09 GB) in the checkpoint
layout, grows it 2x in width (d_model and d_ff doubled, heads following at a fixed head_dim) with
`flm grow` in a child process, and copies the grown model file with `cp` (+ sync) in the same run.
Reports the child's peak RSS (target <= 1.5 GB, or <= 3x the largest output tensor if that is larger) and
grow throughput / cp throughput over the same output bytes (target >= 0.3). Everything lives in a
temporary folder under --dir (default /tmp), removed at the end.

    .venv/bin/python benchmarks/grow_io.py [--d-model 2048 --layers 15 --dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from flm.checkpoint import write_manifest
from flm.config import ModelConfig, RunConfig, save_config
from flm.growth.plan import param_shapes
from flm.io import atomic_write
from flm.tensorio import SafetensorsWriter

RESULTS = Path(__file__).resolve().parent / "results" / "grow_io.json"

# Runs in the child: the real CLI, then the child's own peak RSS (ru_maxrss is in KiB on Linux).
CHILD = """
import json, resource, sys, time
from flm.cli import main
t0 = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "seconds": time.perf_counter() - t0,
                  "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def write_checkpoint(folder: Path, cfg: ModelConfig) -> int:
    """A random fp32 checkpoint, written tensor by tensor (this process never holds the model)."""
    folder.mkdir(parents=True)
    shapes = param_shapes(cfg)
    writer = SafetensorsWriter(
        folder / "model.safetensors", [(n, torch.float32, s) for n, s in shapes.items()]
    )
    gen = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        writer.write(name, torch.empty(shape).normal_(0, 0.02, generator=gen))
    writer.close()
    save_config(RunConfig(model=cfg), folder / "config.toml")
    (folder / "optim.json").write_text(json.dumps({"step": 1000}))
    (folder / "trainer.json").write_text(json.dumps({"step": 1000, "tokens": 0, "flops": 0.0, "ramp": None}))
    write_manifest(folder)
    return (folder / "model.safetensors").stat().st_size


def timed_cp(src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    subprocess.run(["sync", str(dst)], check=True)
    return time.perf_counter() - t0


def save_result(path: Path, result: dict) -> None:
    """Write a benchmark's result, with the machine's CPU and thread counts, to ``path`` (atomically, as
    indented JSON) and print it as one line."""
    result = {**result, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    atomic_write(path, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=15)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--dir", default="/tmp", help="where the temporary checkpoints go (needs ~10x the size)")
    args = ap.parse_args()
    d = args.d_model
    cfg = ModelConfig(
        vocab_size=args.vocab, d_model=d, n_heads=d // args.head_dim, d_ff=4 * d, n_layers=args.layers,
        max_seq_len=2048,
    )  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="flm-grow-io-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        in_bytes = write_checkpoint(root / "src", cfg)
        print(
            f"wrote a {in_bytes / 1e9:.2f} GB checkpoint in {time.perf_counter() - t0:.1f} s", file=sys.stderr
        )
        spec = f"d_model={2 * d},d_ff={8 * d}"
        child = subprocess.run(
            [sys.executable, "-c", CHILD, "grow", str(root / "src"), "--to", spec, "--out", str(root / "out"),
             "--no-progress"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if child.returncode != 0:
            raise SystemExit(f"flm grow failed:\n{child.stdout}\n{child.stderr}")
        print(child.stdout, file=sys.stderr, end="")
        grow = json.loads(child.stdout.strip().splitlines()[-1])
        out_file = root / "out" / "model.safetensors"
        out_bytes = out_file.stat().st_size
        cp_seconds = timed_cp(out_file, root / "copy.bin")
        largest = 4 * max(
            torch.Size(s).numel()
            for s in param_shapes(
                ModelConfig(
                    **{**cfg.model_dump(), "d_model": 2 * d, "n_heads": 2 * d // args.head_dim, "d_ff": 8 * d}
                )
            ).values()
        )
        rss_target = max(1.5e9, 3 * largest)
        grow_tp, cp_tp = out_bytes / grow["seconds"], out_bytes / cp_seconds
        result = {
            "benchmark": "grow_io",
            "input_bytes": in_bytes,
            "output_bytes": out_bytes,
            "shape_from": cfg.shape(),
            "spec": spec,
            "grow_seconds": round(grow["seconds"], 2),
            "grow_gb_per_s": round(grow_tp / 1e9, 3),
            "cp_seconds": round(cp_seconds, 2),
            "cp_gb_per_s": round(cp_tp / 1e9, 3),
            "throughput_ratio": round(grow_tp / cp_tp, 3),
            "throughput_target": 0.3,
            "peak_rss_bytes": grow["max_rss_bytes"],
            "largest_output_tensor_bytes": largest,
            "peak_rss_target_bytes": int(rss_target),
            "rss_ok": grow["max_rss_bytes"] <= rss_target,
            "throughput_ok": grow_tp / cp_tp >= 0.3,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    save_result(RESULTS, result)


if __name__ == "__main__":
    main()
