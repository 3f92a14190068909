"""Process-level behaviour: kill -9 then --resume is bitwise exact; FSDP2 on 2 gloo ranks matches one
process. Every subprocess has a hard timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from flm.checkpoint import latest_checkpoint
from flm.config import config_from_dict, dump_toml
from flm.train.metrics import read_metrics

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def flm(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flm.cli", *args], env=ENV, timeout=timeout,
                          capture_output=True, text=True)


def write_cfg(path: Path, cfg: dict) -> Path:
    path.write_text(dump_toml(config_from_dict(cfg)))
    return path


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def loss_log(run: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r.get("val_loss")) for r in read_metrics(run / "metrics.jsonl")]


def resume_matches(config: Path, run: Path, ref: Path) -> None:
    """``flm train --resume`` the run in ``run`` to its end: the weights and loss log of the uninterrupted
    ``ref``, bitwise."""
    res = flm("train", str(config), "--out", str(run), "--resume")
    assert res.returncode == 0, res.stderr
    a, b = weights(ref), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loss_log(ref) == loss_log(run)


def test_kill_minus_nine_then_resume_is_bitwise_exact(tiny_cfg, tmp_path):
    cfg = tiny_cfg(steps=200, ckpt_every=20, keep_last=3, eval_every=50, log_every=5)
    cfg["model"].update(d_model=64, n_heads=4)
    path = write_cfg(tmp_path / "c.toml", cfg)
    assert flm("data", "prepare", str(path)).returncode == 0  # shards cached before the race below

    ref = flm("train", str(path), "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "flm.cli", "train", str(path), "--out", str(run)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    target = run / "checkpoints" / "step_00000040"
    while not target.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "checkpoints" / "step_00000200").exists()

    resume_matches(path, run, tmp_path / "ref")


def test_fsdp2_two_ranks_matches_single_process(tiny_cfg, tmp_path):
    cfg = tiny_cfg(steps=3, batch_size=4, eval_every=0)
    path = write_cfg(tmp_path / "c.toml", cfg)
    single = flm("train", str(path), "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    dist = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "flm.cli", "train", str(path), "--out", str(tmp_path / "fsdp")],
        env=ENV, timeout=240, capture_output=True, text=True,
    )
    assert dist.returncode == 0, dist.stderr[-3000:]
    a, b = weights(tmp_path / "single"), weights(tmp_path / "fsdp")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-5, worst
    la = [r["loss"] for r in read_metrics(tmp_path / "single" / "metrics.jsonl")]
    lb = [r["loss"] for r in read_metrics(tmp_path / "fsdp" / "metrics.jsonl")]
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-5
