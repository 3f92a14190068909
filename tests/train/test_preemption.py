"""Preemption (SIGTERM / SIGUSR1 -> a checkpoint after the current step, exit 0, exact resume) and the run
folder lock (a second writer refused at once). Every subprocess has a hard timeout."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flm.config import config_from_dict
from flm.errors import FlmError
from flm.train import loop
from flm.train.loop import train_stage
from flm.train.preemption import Preempted
from flm.train.setup import LOCK_FILE, lock_run_folder
from tests.train.test_distributed import ENV, flm, resume_matches, write_cfg


def test_sigusr1_saves_at_the_current_step_and_restores_the_handlers(tiny_cfg, tmp_path, monkeypatch, capsys):
    before = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    real_step = loop.Trainer.train_step

    def step(self):
        out = real_step(self)
        if self.counters.step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)  # mid-stage, off the checkpoint grid (ckpt_every = 4)
        return out

    monkeypatch.setattr(loop.Trainer, "train_step", step)
    with pytest.raises(Preempted) as e:
        train_stage(config_from_dict(tiny_cfg(steps=8, ckpt_every=4)), tmp_path / "run")
    assert e.value.code == 0
    assert (signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)) == before
    out = capsys.readouterr().out
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000003"
    assert f"stopped by SIGUSR1 after step 3: checkpoint {ckpt}" in out
    assert (ckpt / "manifest.json").is_file()


def test_sigterm_stops_at_a_checkpoint_and_resume_is_exact_and_a_second_writer_is_refused(tiny_cfg, tmp_path):
    cfg = tiny_cfg(steps=200, ckpt_every=20, keep_last=3, eval_every=50, log_every=5)
    cfg["model"].update(d_model=64, n_heads=4)
    path = write_cfg(tmp_path / "c.toml", cfg)
    assert flm("data", "prepare", str(path)).returncode == 0
    ref = flm("train", str(path), "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "flm.cli", "train", str(path), "--out", str(run)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    first = run / "checkpoints" / "step_00000020"
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGSTOP)  # frozen mid-run, so that it surely still holds the folder
    t0 = time.time()
    second = flm("train", str(path), "--out", str(run), "--resume", timeout=60)
    refused_in = time.time() - t0
    proc.send_signal(signal.SIGTERM)  # pending until it runs again
    proc.send_signal(signal.SIGCONT)
    t1 = time.time()
    out, err = proc.communicate(timeout=60)
    print(f"second writer refused in {refused_in:.1f} s; stopped {time.time() - t1:.1f} s after SIGTERM")
    assert time.time() - t1 < 30
    assert proc.returncode == 0, err[-2000:]
    assert second.returncode == 2 and f"PID {proc.pid}" in second.stderr, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and refused_in < 30
    m = re.search(r"stopped by SIGTERM after step (\d+): checkpoint (\S+);", out)
    assert m, out
    step, ckpt = int(m.group(1)), Path(m.group(2))
    assert 20 <= step < 200 and ckpt.name == f"step_{step:08d}" and (ckpt / "manifest.json").is_file()

    resume_matches(path, run, tmp_path / "ref")


def test_a_locked_run_folder_is_refused_at_once_naming_the_holder(tiny_cfg, tmp_path):
    path, run = write_cfg(tmp_path / "c.toml", tiny_cfg()), tmp_path / "run"
    fd = lock_run_folder(run)  # this test process is the first writer
    try:
        res = flm("train", str(path), "--out", str(run), timeout=120)
    finally:
        os.close(fd)
    assert res.returncode == 2, res.stderr
    assert f"PID {os.getpid()} on host {socket.gethostname()}" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing written

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; from flm.train.setup"
                               " import lock_run_folder; lock_run_folder(Path(sys.argv[1])); print('held', flush=True);"
                               " time.sleep(120)", str(run)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FlmError, match=f"PID {holder.pid} on host"):
            lock_run_folder(run)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    os.close(lock_run_folder(run))  # the kernel dropped the lock with the killed process


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _rank_of(pid: int) -> int | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)


def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tiny_cfg, tmp_path):
    path = write_cfg(tmp_path / "c.toml", tiny_cfg(steps=400, ckpt_every=10, eval_every=0, log_every=10))
    assert flm("data", "prepare", str(path)).returncode == 0
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "flm.cli", "train", str(path), "--out", str(run)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not (run / "checkpoints" / "step_00000010").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        rank1 = [c for c in _children(proc.pid) if _rank_of(c) == 1]
        assert len(rank1) == 1, "no rank 1 found"
        os.kill(rank1[0], signal.SIGUSR1)  # rank 0 is not told: the per-step all-reduce tells it
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    m = re.search(r"stopped by another rank's signal after step (\d+): checkpoint (\S+);", out)
    assert m, out + err[-2000:]
    step = int(m.group(1))
    assert 10 <= step < 400 and (Path(m.group(2)) / "manifest.json").is_file()


def test_ctrl_c_saves_like_sigterm_and_a_second_one_aborts(tiny_cfg, tmp_path):
    """The first Ctrl-C (SIGINT) ends the step, writes a checkpoint at it and exits 130, saying so; inside the
    trainer a second one raises KeyboardInterrupt at once (abort, keeping the complete checkpoints)."""
    cfg = tiny_cfg(steps=400, ckpt_every=25, keep_last=3, eval_every=0, log_every=5)
    cfg["model"].update(d_model=64, n_heads=4)
    path, run = write_cfg(tmp_path / "c.toml", cfg), tmp_path / "run"
    assert flm("data", "prepare", str(path)).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "flm.cli", "train", str(path), "--out", str(run)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step_00000025").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Ctrl-C: stopping after this step with a checkpoint; Ctrl-C again aborts at once" in err
    m = re.search(r"stopped by SIGINT after step (\d+): checkpoint (\S+); --resume continues from it", out)
    assert m, out
    step, ckpt = int(m.group(1)), Path(m.group(2))
    assert 25 <= step < 400 and ckpt.name == f"step_{step:08d}" and (ckpt / "manifest.json").is_file()
    assert "Traceback" not in err

    from flm.distributed.env import DistEnv
    from flm.train.preemption import StopRequest

    before = signal.getsignal(signal.SIGINT)
    with StopRequest(DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.agreed() and stop.exit_code == 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
    assert signal.getsignal(signal.SIGINT) == before
