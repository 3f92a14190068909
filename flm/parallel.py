"""Parallelism applied to the model from outside (torchtitan's pattern): the device mesh and FSDP2.

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

from flm.config import ParallelConfig, TrainConfig
from flm.errors import FlmError


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


def pick_device(train: TrainConfig, local_rank: int = 0) -> torch.device:
    if train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise FlmError("train.device = 'cuda' but no CUDA device is visible; set train.device = 'cpu'")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


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
    device = pick_device(train, local_rank)
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
        from torch.distributed.device_mesh import init_device_mesh

        env.mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("dp",))
    return env


def apply_compile(model: nn.Module) -> nn.Module:
    """Compile each block in place (regional compilation, as torchtitan does): the blocks share one code
    object, so one compilation serves every layer, and parameter names (checkpoints, muP groups, FSDP2)
    do not change. Call before ``apply_fsdp``. A growth ramp adds mask buffers: one recompile when it
    starts and one when it ends."""
    # A fresh compile cache: every block of every stage shares Block.forward's code object, and the shapes
    # of earlier stages would otherwise fill dynamo's recompile limit (8), after which it runs eager.
    torch.compiler.reset()
    for block in model.blocks.values():  # type: ignore[attr-defined]
        block.compile()
    return model


def apply_fsdp(model: nn.Module, env: DistEnv, bf16: bool = False) -> nn.Module:
    """Shard each block, then the root (embedding, final norm), over the data-parallel mesh. With bf16 the
    all-gathers carry bf16 parameters and gradients are reduced in fp32 (the master weights stay fp32)."""
    if not env.distributed:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kw = {"mesh": env.mesh} | ({"mp_policy": mp} if mp else {})
    for block in model.blocks.values():  # type: ignore[attr-defined]
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model


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
