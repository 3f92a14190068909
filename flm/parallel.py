"""Parallelism applied to the model from outside (torchtitan's pattern): the device mesh and FSDP2.
(Being folded into ``flm.distributed``, which holds the FSDP2 and compile logic and 3-D layouts.)

Single process: nothing is wrapped. Under torchrun (WORLD_SIZE > 1): a 1-D data-parallel mesh, every block
and then the root sharded with ``fully_shard``; gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from flm.config import ParallelConfig, TrainConfig
from flm.distributed.parallelize import apply_compile as apply_compile  # re-exported until this module folds in
from flm.distributed.parallelize import apply_fsdp as fsdp_over_mesh
from flm.errors import FlmError
from flm.hardware import pick_device


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def use_bf16(train: TrainConfig, device: torch.device) -> bool:
    """Whether to train under bf16 autocast. 'auto' means bf16 in hardware (CUDA Ampere or newer); older
    GPUs (V100, T4) only emulate it, slower than fp32, so 'auto' keeps fp32 there. bf16 on a CPU is refused."""
    if train.dtype == "bf16" and device.type == "cpu":
        raise FlmError("train.dtype = 'bf16' on CPU: this CPU has no bf16 units (100x slower); use fp32")
    native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return train.dtype == "bf16" or (train.dtype == "auto" and native)


def init_distributed(train: TrainConfig, parallel: ParallelConfig) -> DistEnv:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(train.device, local_rank, where="train.device")
    if parallel.tp != 1 or parallel.pp != 1:
        raise FlmError(
            f"parallel.tp = {parallel.tp}, parallel.pp = {parallel.pp}: only data parallelism (FSDP2) is "
            "available in this version; set tp = 1 and pp = 1"
        )
    if parallel.dp not in (-1, world):
        raise FlmError(f"parallel.dp = {parallel.dp} but {world} processes were started; set dp = -1 or {world}")
    env = DistEnv(rank, world, local_rank, device)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            # rank 0 alone writes (and hashes) each checkpoint while the others wait in a collective:
            # the timeout must cover the largest save, not just a training step
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=parallel.timeout_s)
            )
        env.mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("dp",))
    return env


def apply_fsdp(model: nn.Module, env: DistEnv, bf16: bool = False) -> nn.Module:
    """FSDP2 over the data-parallel mesh of ``env`` (``flm.distributed.parallelize.apply_fsdp``); nothing in
    one process."""
    if not env.distributed:
        return model
    return fsdp_over_mesh(model, env.mesh, bf16)  # type: ignore[arg-type]


def all_reduce_sum(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
