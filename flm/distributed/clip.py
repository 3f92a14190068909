"""Gradient-norm clipping for any layout.

``torch.nn.utils.clip_grad_norm_`` refuses a mix of DTensor gradients (tensor-parallel or FSDP2 parameters)
and plain ones (the replicated LayerNorms of a tensor-parallel model), and knows nothing of pipeline stages.
Here each rank adds the squares of its local gradient entries, weighted by 1 / (how many ranks of its stage
hold the same entries), and one all-reduce over all ranks gives the squared norm of the whole model's
gradient: every entry counted once, whichever stage, shard or replica holds it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from flm.distributed.mesh import ParallelDims


def _replicas(g: Tensor, stage_ranks: int) -> int:
    """How many ranks of a pipeline stage hold each local entry of ``g``."""
    if not isinstance(g, DTensor):
        return stage_ranks
    shards = 1
    for i, placement in enumerate(g.placements):
        if placement.is_partial():
            raise ValueError(f"gradient with placement {placement}: reduce it before clipping")
        if not placement.is_replicate():  # Shard, or FSDP2's strided shard of a tensor-parallel shard
            shards *= g.device_mesh.size(i)
    return stage_ranks // shards


def clip_grad_norm_(params: Iterable[nn.Parameter], max_norm: float, dims: ParallelDims) -> Tensor:
    """Scale the gradients in place so that their global L2 norm is at most ``max_norm`` (no scaling when
    ``max_norm`` is 0); returns the norm before clipping, a plain fp32 scalar, the same on every rank.
    Every rank must call it (one all-reduce)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        raise ValueError("clip_grad_norm_: no parameter has a gradient (call it after backward)")
    stage_ranks = dims.dp * dims.tp
    local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    weight = torch.tensor([1.0 / _replicas(g, stage_ranks) for g in grads], device=local[0].device)
    total = (torch.stack(torch._foreach_norm(local)).float().square() * weight).sum()
    if dims.distributed:
        dist.all_reduce(total)
    norm = total.sqrt()
    if max_norm > 0:
        torch._foreach_mul_(local, (max_norm / (norm + 1e-6)).clamp(max=1.0).to(local[0].dtype))
    return norm
