"""Spawned gloo ranks on CPU for the distributed tests: ``spawn(fn, world, tmp_path, *args)`` runs
``fn(rank, world, tmp_path, *args)`` in ``world`` fresh processes (one thread each) joined to one process group
through a file store, with a hard timeout; a rank's exception fails the test with its traceback."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 150.0


def _entry(rank: int, fn: Callable, world: int, tmp: str, args: tuple, store: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        fn(rank, world, Path(tmp), *args)
    finally:
        dist.destroy_process_group()


# Ranks are forked from one clean server process that has imported torch and flm once ("forkserver"): a
# fresh interpreter per rank ("spawn") would import them again each time, most of a test's time on 2 cores;
# forking the pytest process itself ("fork") would copy its OpenMP thread pool, which can hang the children.
mp.set_forkserver_preload(["torch", "flm.distributed.parallelize", "flm.distributed.init", "flm.growth.ops"])


def spawn(fn: Callable, world: int, tmp_path: Path, *args, timeout: float = TIMEOUT_S) -> None:
    # A fresh rendezvous file per spawn: a second spawn in the same folder could otherwise meet the first group's
    # file store before its last rank has removed it, and wait forever (CI hung once that way).
    store = tmp_path / f"rendezvous-{uuid.uuid4().hex}"
    ctx = mp.start_processes(_entry, args=(fn, world, str(tmp_path), args, str(store)), nprocs=world, join=False,
                             start_method="forkserver")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"{fn.__name__} on {world} ranks did not finish in {timeout:.0f} s")
