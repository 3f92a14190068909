"""The CPU-checkable parts of the GPU and cluster scripts: scripts/gpu_check.sh stops with one clear line
without CUDA; benchmarks/throughput.py's --device/--dtype/--shapes options (which gpu_check.sh drives at a GPU
shape) run bf16 autocast on a tiny shape on the CPU; the SLURM script parses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_check_without_cuda_fails_clearly():
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                       timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert r.returncode == 3
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "no CUDA device" in r.stderr


def test_throughput_options_bf16_tiny_shape(tmp_path):
    out = tmp_path / "throughput.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--shapes", "tiny", "--dtype", "bf16",
           "--warmup", "1", "--repeats", "1", "--threads", "1", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert (line["device"], line["dtype"]) == ("cpu", "bf16")
    assert line["tiny"]["flm_tok_s"] > 0 and line["tiny"]["hf_tok_s"] > 0 and line["tiny"]["flm_mfu"] > 0
    assert json.loads(out.read_text())["step_seconds"]["tiny"]["flm"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_throughput_cuda_without_gpu_exits_2():
    cmd = [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--device", "cuda", "--shapes", "tiny"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no CUDA device" in r.stderr


def test_slurm_script_parses_and_uses_stage1_layout():
    script = REPO / "scripts" / "slurm_flm101b_stage1.sh"
    assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
    text = script.read_text()
    assert "#SBATCH --nodes=24" in text and "--nproc_per_node 8" in text and "--rdzv_backend c10d" in text
    assert "parallel.tp=2" in text and "parallel.dp=96" in text
