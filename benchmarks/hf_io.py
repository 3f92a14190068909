"""Streaming `flm export hf` and `flm import hf` of a checkpoint over 1 GB: time and peak RSS vs `cp`.

Writes a random fp32 checkpoint (default d_model 1536, d_ff 6144, 10 layers, vocabulary 8192: 1.19 GB) in the
checkpoint layout, exports it to a GPT-NeoX transformers folder with `flm export hf` in a child process,
imports that folder back with `flm import hf` in another child, and copies the same model file with `cp`
(+ sync). Reports each child's peak RSS (target <= 1.5 GB) and time (the whole command, and its own streaming
time without the ~5 s the CLI takes to build its parser) next to cp's over the same bytes, and
checks that the round trip gave back the same tensors, bit for bit. cp reads the source from the page cache
(it was just written) while export and import read with O_DIRECT from disk, so cp's time is a lower bound.
Everything lives in a temporary folder under --dir (default /tmp), removed at the end. Prints one JSON line
and writes benchmarks/results/hf_io.json.

    .venv/bin/python benchmarks/hf_io.py [--d-model 1536 --layers 10 --dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from grow_io import CHILD, save_result, timed_cp, write_checkpoint

from flm.checkpoint import write_manifest
from flm.config import ModelConfig
from flm.data.tokenizer import train_bpe
from flm.tensorio import SafetensorsReader

RESULTS = Path(__file__).resolve().parent / "results" / "hf_io.json"
RSS_TARGET = 1.5e9


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def same_tensors(a: Path, b: Path) -> bool:
    """Every tensor of ``a`` equal, bit for bit, to ``b``'s of the same name (read one at a time)."""
    ra, rb = SafetensorsReader(a), SafetensorsReader(b)
    try:
        return ra.shapes == rb.shapes and all(torch.equal(ra.read(k), rb.read(k)) for k in ra.shapes)
    finally:
        ra.close()
        rb.close()


def run_child(*argv: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    child = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, env=env, check=False)
    if child.returncode != 0:
        raise SystemExit(f"flm {' '.join(argv[:2])} failed:\n{child.stdout}\n{child.stderr}")
    print(child.stdout, file=sys.stderr, end="")
    out = json.loads(child.stdout.strip().splitlines()[-1])
    # the command's own time for the tensors ("... GB of tensors in X s"), without building the CLI's parser
    out["stream_seconds"] = float(re.search(r"tensors in ([0-9.]+) s", child.stdout).group(1))  # type: ignore[union-attr]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--dir", default="/tmp", help="where the temporary folders go (needs ~4x the size)")
    args = ap.parse_args()
    d = args.d_model
    cfg = ModelConfig(vocab_size=args.vocab, d_model=d, n_heads=d // args.head_dim, n_layers=args.layers,
                      max_seq_len=2048, xpos=False)  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="flm-hf-io-", dir=args.dir))
    try:
        src = root / "src"
        in_bytes = write_checkpoint(src, cfg)
        train_bpe([f"text number {i} of the benchmark" for i in range(50)], 300).save(src)
        write_manifest(src)  # again, with the tokenizer
        exp = run_child("export", "hf", str(src), str(root / "hf"))
        imp = run_child("import", "hf", str(root / "hf"), str(root / "back"))
        cp_seconds = timed_cp(src / "model.safetensors", root / "copy.bin")
        same = same_tensors(src / "model.safetensors", root / "back" / "model.safetensors")
        hf_bytes = (root / "hf" / "model.safetensors").stat().st_size
        result = {
            "benchmark": "hf_io",
            "checkpoint_bytes": in_bytes,
            "hf_model_bytes": hf_bytes,
            "shape": cfg.shape(),
            "largest_tensor_bytes": 4 * max(d * cfg.d_ff, cfg.padded_vocab_size * d),  # type: ignore[operator]
            "export_seconds": round(exp["seconds"], 2),
            "export_peak_rss_bytes": exp["max_rss_bytes"],
            "export_stream_seconds": exp["stream_seconds"],
            "import_seconds": round(imp["seconds"], 2),
            "import_stream_seconds": imp["stream_seconds"],
            "import_peak_rss_bytes": imp["max_rss_bytes"],
            "cp_seconds": round(cp_seconds, 2),
            "export_stream_vs_cp": round(exp["stream_seconds"] / cp_seconds, 2),
            "import_stream_vs_cp": round(imp["stream_seconds"] / cp_seconds, 2),
            "peak_rss_target_bytes": int(RSS_TARGET),
            "rss_ok": max(exp["max_rss_bytes"], imp["max_rss_bytes"]) <= RSS_TARGET,
            "round_trip_tensors_equal": same,
            "cpu_model": cpu_model(),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    save_result(RESULTS, result)


if __name__ == "__main__":
    main()
