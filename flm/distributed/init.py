"""Build an FLM without memory (meta device), parallelize it, then give every rank its shard of the same weights.

Each parameter's values come from its own generator, seeded from (seed, canonical parameter name) with the
per-tensor seed growth uses (``flm.growth.ops.tensor_seed``), drawn with the muP init of ``flm.mup`` (via
``flm.growth.plan.init_for``). Nothing depends on a global RNG stream or on the order in which tensors are
visited, so the full weights are bitwise the same in one process, under tp2, dp (FSDP2), a pipeline stage
holding a subset of the blocks (its parameters keep the full model's names), or any mix: only the device
type matters (CPU and CUDA generators draw different numbers).

Each rank draws a parameter's full tensor, then keeps its local shard: peak extra memory is one full tensor
(the largest is the embedding, padded vocabulary x d_model), never the model. A grown stage's state
(``flm.growth.region.RegionSource``) is asked for each rank's box alone, which reads only the old slice in it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from flm.config import ModelConfig
from flm.growth.ops import build_tensor
from flm.growth.plan import TensorPlan, init_for
from flm.model import FLM
from flm.mup import canonical_name
from flm.tensorio import Region, RegionSource, whole


def meta_model(cfg: ModelConfig) -> FLM:
    """An FLM whose tensors have shapes but no storage: parallelize it, then ``materialize`` it."""
    with torch.device("meta"):
        return FLM(cfg)


def full_init(name: str, shape: tuple[int, ...], cfg: ModelConfig, seed: int, device: torch.device | str) -> Tensor:
    """The initial value of parameter ``name`` (any wrapper prefixes allowed), whole."""
    name = canonical_name(name)
    return build_tensor(TensorPlan(name, shape, None, init_for(name, cfg), True), None, seed, device=device)


@torch.no_grad()
def materialize(model: FLM, device: torch.device | str, seed: int, state: Mapping[str, Tensor] | None = None) -> FLM:
    """Allocate ``model``'s tensors on ``device`` (``to_empty``) and fill each rank's shard with the layout-free
    initial values described above, or with the values of ``state`` (a full, one-process state dict, e.g. a
    checkpoint's or a grown model's). Works on a plain, tensor-parallel, FSDP2-sharded or pipeline-stage
    model; non-persistent buffers get their fresh values (growth ramp m = 0, no masks)."""
    model.to_empty(device=device)
    cfg = model.cfg
    for name, p in model.named_parameters():
        key = canonical_name(name)
        if isinstance(state, RegionSource):
            copy_local(p, state.region(key, local_region(p)))
            continue
        if state is None:
            full = full_init(key, tuple(p.shape), cfg, seed, device)
        else:
            full = state[key].to(device=device, dtype=p.dtype)
        copy_shard(p, full)
    model.end_growth()
    model.grow_m.zero_()
    return model


def copy_shard(p: nn.Parameter | Tensor, full: Tensor) -> None:
    """Copy this rank's part of the full tensor ``full`` into ``p`` (a DTensor's local shard, or all of it)."""
    if isinstance(p, DTensor):  # each rank keeps its own chunk: no communication (src_data_rank=None)
        local = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
        p.to_local().copy_(local)
    else:
        p.copy_(full)


def local_region(p: Tensor) -> Region:
    """The box of the full tensor this rank holds of ``p`` (a DTensor's shard, or all of a plain tensor)."""
    if not isinstance(p, DTensor):
        return whole(tuple(p.shape))
    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return tuple(slice(o, o + n) for o, n in zip(offset, shape))


def copy_local(p: nn.Parameter | Tensor, local: Tensor) -> None:
    """Copy this rank's box of a tensor (``local_region(p)``) into ``p``."""
    dst = p.to_local() if isinstance(p, DTensor) else p
    if tuple(dst.shape) != tuple(local.shape):
        raise AssertionError(f"shard shape {tuple(dst.shape)} but the box read has {tuple(local.shape)}")
    dst.copy_(local.to(device=dst.device, dtype=dst.dtype))
