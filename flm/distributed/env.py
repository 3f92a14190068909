"""This process's place in the job: rank, device, the process group, and the current layout (``ParallelDims``
and its ("pp", "dp", "tp") device mesh).

Single process: no process group, no mesh, every degree 1. Under torchrun (WORLD_SIZE > 1): one process group
for the whole job (gloo on CPU, NCCL on GPU); each stage of a run may take another layout of the same
processes (``DistEnv.with_layout``), which builds that layout's mesh.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from flm.config import ParallelConfig, TrainConfig
from flm.distributed.mesh import ParallelDims
from flm.errors import FlmError
from flm.hardware import pick_device
from flm.log import set_rank


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    dims: ParallelDims = field(default_factory=lambda: ParallelDims(pp=1, dp=1, tp=1, world_size=1))
    mesh: DeviceMesh | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def dp_rank(self) -> int:
        """Which data-parallel replica this rank belongs to: it reads that replica's share of each batch
        (every tp and pp rank of a replica reads the same rows)."""
        return self.mesh["dp"].get_local_rank() if self.mesh is not None else 0

    @property
    def dp_size(self) -> int:
        return self.dims.dp

    def with_layout(self, parallel: ParallelConfig, where: str = "parallel") -> DistEnv:
        """The same processes under the layout ``parallel`` (a stage's own); builds its mesh (collective)."""
        dims = ParallelDims.from_config(parallel, self.world_size, where)
        mesh = dims.build_mesh(self.device.type) if self.distributed else None
        return replace(self, dims=dims, mesh=mesh)

    def sum_over_dp(self, value: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) over this rank's data-parallel group: the replicas that each hold part of the batch
        (tp and pp peers hold the same numbers already)."""
        if self.dims.dp > 1:
            assert self.mesh is not None
            dist.all_reduce(value, op=dist.ReduceOp.SUM, group=self.mesh["dp"].get_group())
        return value


def use_bf16(train: TrainConfig, device: torch.device) -> bool:
    """Whether to train under bf16 autocast. 'auto' means bf16 in hardware (CUDA Ampere or newer); older
    GPUs (V100, T4) only emulate it, slower than fp32, so 'auto' keeps fp32 there. bf16 on a CPU is refused."""
    if train.dtype == "bf16" and device.type == "cpu":
        raise FlmError("train.dtype = 'bf16' on CPU: this CPU has no bf16 units (100x slower); use fp32")
    native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return train.dtype == "bf16" or (train.dtype == "auto" and native)


def init_distributed(train: TrainConfig, parallel: ParallelConfig, where: str = "parallel") -> DistEnv:
    """Join the job torchrun started (nothing to join in one process) under the layout ``parallel``. A layout
    that does not fit the number of processes, and bf16 on a CPU, are refused before the process group starts."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(train.device, local_rank, where="train.device")
    use_bf16(train, device)  # refuses bf16 on a CPU now (every stage of a plan shares train.dtype and device)
    ParallelDims.from_config(parallel, world, where)
    env = DistEnv(rank, world, local_rank, device)
    set_rank(rank)  # the log speaks on rank 0 (FLM_LOG_RANKS=all: on every rank)
    if world > 1:
        unset = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        # without them init_process_group ends in a traceback (or waits for peers that never come)
        if unset and not dist.is_initialized():
            raise FlmError(f"WORLD_SIZE = {world} but {', '.join(unset)} not set: start a job of several processes "
                           f"with torchrun (torchrun --nproc_per_node {world} -m flm.cli ...), or unset WORLD_SIZE")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            # rank 0 alone writes (and hashes) each checkpoint while the others wait in a collective:
            # the timeout must cover the largest save, not just a training step
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=parallel.timeout_s)
            )
    return env.with_layout(parallel, where)


class RankLost(FlmError):
    """A collective failed because another rank died or stopped answering: not the user's mistake (exit 1)."""

    exit_code = 1


# What gloo / NCCL / the c10d store say when a peer is gone (its socket closed) or silent (the timeout)
_PEER_GONE = re.compile(r"connection (?:closed|reset) by peer|broken pipe|timed out|socket timeout|"
                        r"communicator was aborted", re.IGNORECASE)


@contextmanager
def rank_loss_as_error(env: DistEnv, timeout_s: int, out: os.PathLike[str] | str) -> Iterator[None]:
    """Under torchrun, turn the error of a collective whose peer died (or hangs past ``timeout_s``) into one
    line that says so and how to go on, instead of each survivor's traceback."""
    try:
        yield
    except RuntimeError as e:  # torch.distributed.DistError is one
        found = _PEER_GONE.search(str(e)) if env.distributed else None
        if found is None:
            raise
        raise RankLost(
            f"rank {env.rank} of {env.world_size}: a collective failed ({found.group(0)}): another rank died or "
            f"stopped answering (parallel.timeout_s = {timeout_s}); the complete checkpoints in {out} are kept: "
            "start the job again with --resume"
        ) from None


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
