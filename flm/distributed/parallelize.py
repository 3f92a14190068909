"""``parallelize``: every parallelism and training wrapper, applied to a plain FLM from outside, in a fixed order
(torchtitan's): tensor parallel -> activation checkpointing -> compile per block -> FSDP2 over "dp".

The order matters: TP replaces parameters by DTensors, which checkpointing and compile then see; compile goes
after checkpointing so the recompute is traced too; FSDP2 comes last and shards the (TP-sharded) parameters
over the data-parallel sub-mesh, giving 2-D (dp, tp) parameters. None of these changes a parameter name, so
checkpoints, muP groups (``flm.mup.param_groups``) and growth masks work the same on the result.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import checkpoint

from flm.config import SELECTIVE_EVERY, TrainConfig
from flm.distributed.mesh import ParallelDims
from flm.distributed.tensor_parallel import apply_tp
from flm.model import FLM


def parallelize(model: FLM, dims: ParallelDims, mesh: DeviceMesh | None, train: TrainConfig,
                bf16: bool = False) -> FLM:
    """Apply the layout ``dims`` (on ``mesh``, from ``dims.build_mesh``; None in one process) and the training
    wrappers ``train`` asks for, in place. Call on the meta-device model before ``materialize``, or on a
    model with weights (then every rank must hold the same weights, e.g. loaded from one checkpoint)."""
    if dims.tp > 1:
        assert mesh is not None
        apply_tp(model, mesh["tp"], dims.sequence_parallel)
    apply_ac(model, train.activation_checkpointing)
    if train.compile:
        apply_compile(model)
    if dims.dp > 1:
        assert mesh is not None
        # under pipeline parallelism a stage runs forward once per micro-batch: keep its parameters gathered
        apply_fsdp(model, mesh["dp"], bf16, reshard_after_forward=dims.pp == 1)
    return model


def apply_ac(model: FLM, mode: str) -> FLM:
    """Activation checkpointing: 'full' = every block, 'selective' = every ``SELECTIVE_EVERY``-th block by its
    index in the whole model (blocks 1, 3, 5, ...; the same blocks under any pipeline split), 'none'.

    torch.utils.checkpoint (non-reentrant, RNG state preserved, so dropout recomputes the same mask) around
    the block's own forward, set on the block itself rather than through torch's ``checkpoint_wrapper``: a
    wrapper module would add "_checkpoint_wrapped_module" to every name and hide the block's growth buffers
    (``Block.depth_new``) behind the wrapper's attributes."""
    if mode == "none":
        return model
    for key, block in model.blocks.items():
        if mode == "full" or int(key) % SELECTIVE_EVERY == SELECTIVE_EVERY - 1:
            _checkpoint_forward(block)
    return model


def _checkpoint_forward(module: nn.Module) -> None:
    forward = module.forward

    def checkpointed(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    module.forward = checkpointed  # type: ignore[method-assign]


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


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, bf16: bool = False, reshard_after_forward: bool = True
               ) -> nn.Module:
    """Shard each block, then the root (embedding, final norm), over the data-parallel mesh ``dp_mesh`` (a
    sub-mesh of the 3-D mesh: tensor-parallel DTensors become 2-D (dp, tp)). With bf16 the all-gathers carry
    bf16 parameters and gradients are reduced in fp32 (the master weights stay fp32)."""
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kw = {"mesh": dp_mesh, "reshard_after_forward": reshard_after_forward} | ({"mp_policy": mp} if mp else {})
    for block in model.blocks.values():  # type: ignore[attr-defined]
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return model
