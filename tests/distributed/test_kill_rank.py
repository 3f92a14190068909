"""Rank loss: one of two gloo ranks of `flm train` is SIGKILLed mid-training. The other ends by itself, well
within parallel.timeout_s, with one line (no traceback) saying that a peer is gone and to --resume; a 2-rank
--resume under torchrun then ends with the weights and losses of an uninterrupted 2-rank run, bitwise.

The ranks of the killed job are started one process each, as `srun` starts them: under torchrun the agent
itself stops the other ranks at once when one dies, which would hide what the survivor does alone. Every
subprocess has a hard timeout."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config_dict
from tests.train.test_distributed import ENV, flm, loss_log, weights, write_cfg

TIMEOUT_S = 30  # parallel.timeout_s of these runs: the bound on how long a survivor may wait


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "flm.cli", *args], env=ENV, timeout=300, capture_output=True, text=True)


def start_ranks(*args: str) -> list[subprocess.Popen]:
    """Two ranks, one process each (the environment torchrun would give them)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = {**ENV, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return [subprocess.Popen([sys.executable, "-m", "flm.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**common, "RANK": str(r), "LOCAL_RANK": str(r)}, text=True) for r in (0, 1)]


@pytest.fixture(scope="module")
def job(tiny_corpus, prepared_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The config and its uninterrupted 2-rank run."""
    tmp = tmp_path_factory.mktemp("kill_rank")
    cfg = tiny_config_dict(tiny_corpus, prepared_dir, steps=120, ckpt_every=10, keep_last=2, eval_every=40, log_every=5)
    cfg["parallel"] = {"timeout_s": TIMEOUT_S}
    path = write_cfg(tmp / "c.toml", cfg)
    assert flm("data", "prepare", str(path)).returncode == 0
    ref = torchrun("train", str(path), "--out", str(tmp / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    return path, tmp / "ref"


def wait_for_checkpoint(run: Path, procs: list[subprocess.Popen], step: int) -> None:
    deadline = time.time() + 180
    while not (run / "checkpoints" / f"step_{step:08d}" / "manifest.json").exists() and time.time() < deadline:
        assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
        time.sleep(0.005)


def outlive(survivor: subprocess.Popen, limit: float) -> tuple[str, float]:
    """The survivor's stderr and how many seconds it took to end."""
    t0 = time.time()
    _, err = survivor.communicate(timeout=limit)
    return err, time.time() - t0


@pytest.mark.timeout(600)
@pytest.mark.parametrize("victim", [1, 0])  # rank 0 also hosts the rendezvous store and writes the checkpoints
def test_a_killed_rank_ends_the_other_with_one_line_and_the_resume_is_exact(job, tmp_path, victim):
    path, ref = job
    run = tmp_path / "run"
    procs = start_ranks("train", str(path), "--out", str(run))
    survivor = procs[1 - victim]
    try:
        wait_for_checkpoint(run, procs, 20)
        procs[victim].kill()
        err, ended_in = outlive(survivor, TIMEOUT_S + 60)
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)
    print(f"rank {1 - victim} ended {ended_in:.1f} s after rank {victim} was killed: {err.strip()}")
    assert survivor.returncode == 1, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"rank {1 - victim} of 2: a collective failed" in lines[0], err[-3000:]
    assert "another rank died or stopped answering" in lines[0] and "--resume" in lines[0]
    assert ended_in < TIMEOUT_S
    assert not (run / "checkpoints" / "step_00000120").exists(), "the job ended before the kill"

    res = torchrun("train", str(path), "--out", str(run), "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = weights(ref), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loss_log(ref) == loss_log(run)


@pytest.mark.timeout(300)
def test_a_hung_rank_ends_the_other_at_the_collective_timeout(job, tmp_path):
    path, _ = job
    run, timeout = tmp_path / "run", 8
    procs = start_ranks("train", str(path), "--out", str(run), "--set", f"parallel.timeout_s={timeout}")
    try:
        wait_for_checkpoint(run, procs, 20)
        procs[1].send_signal(signal.SIGSTOP)  # alive, its sockets open, silent: only the timeout tells
        err, ended_in = outlive(procs[0], timeout + 60)
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)
    print(f"rank 0 ended {ended_in:.1f} s after rank 1 stopped: {err.strip()}")
    assert procs[0].returncode == 1, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "rank 0 of 2: a collective failed (Timed out" in lines[0], err[-3000:]
    assert f"parallel.timeout_s = {timeout}" in lines[0]
    assert timeout - 1 < ended_in < timeout + 20
