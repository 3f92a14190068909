"""Tensor parallelism (Megatron-style, on DTensor's ``parallelize_module``) for a plain FLM, from outside.

Per block: q, k, v and mlp.up are column-wise (each rank holds n_heads/tp whole heads and d_ff/tp FFN
units), attn.o and mlp.down row-wise (their outputs are summed over tp; their biases are replicated and
added once, after the sum). The tied embedding / readout is split over the vocabulary: the embedding is
row-wise (each rank looks up its rows, the partial embeddings are summed), the readout ``h @ W.T`` then
gives logits sharded on the vocabulary (a DTensor with ``Shard(-1)``), for ``loss_parallel`` or for the fused
readout of flm.loss, which both compute the cross-entropy without gathering the logits.

Without sequence parallelism the residual stream, LayerNorms, dropout and the hidden mask are plain tensors,
identical on every tp rank (replicated computation), so the masked LayerNorm's statistics are exactly the
single-process ones. With ``sequence_parallel`` the residual stream is a DTensor sharded on the sequence
(``Shard(1)``): LayerNorm and dropout run on 1/tp of the tokens (per-token operations, so the statistics
are still exact), the LayerNorm parameters become replicated DTensors, and the attention/MLP inputs are
all-gathered and their outputs reduce-scattered instead of all-reduced.

Growth masks: a root forward pre-hook cuts a head mask (n_heads,) or an FFN mask (d_ff,) to this rank's
slice, the heads and units it holds, whenever one is set (by ``FLM.load_growth_state`` before or after
parallelization); under sequence parallelism it makes the hidden mask a replicated DTensor. ``growth_state``
gives the full masks back for a checkpoint. The muP multipliers are Python floats, which work on any tensor.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    parallelize_module,
)

from flm.model import FLM


def apply_tp(model: FLM, tp_mesh: DeviceMesh, sequence_parallel: bool = False) -> FLM:
    """Shard ``model`` in place over ``tp_mesh`` (1-D). Works on a meta-device model and on a pipeline stage
    (an FLM without ``tok_emb`` or ``ln_f``, or with a subset of blocks)."""
    sp = sequence_parallel
    residual = Shard(1) if sp else Replicate()  # the layout of the residual stream between blocks
    root: dict[str, object] = {}
    norms: list[nn.Module] = []  # LayerNorms with replicated DTensor parameters (sequence parallel)
    if model.tok_emb is not None:
        root["tok_emb"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=residual, use_local_output=not sp)
    if model.ln_f is not None:
        # the readout multiplies by the vocabulary-sharded embedding: its input must be a DTensor, replicated
        root["ln_f"] = PrepareModuleOutput(
            output_layouts=residual, desired_output_layouts=Replicate(), use_local_output=False
        )
        if sp:
            _replicate_params(model.ln_f, tp_mesh)
            norms.append(model.ln_f)
    if root:
        parallelize_module(model, tp_mesh, root)  # type: ignore[arg-type]
    for block in model.blocks.values():
        parallelize_module(block, tp_mesh, _block_plan(sp))  # type: ignore[arg-type]
        if sp:
            for norm in (block.ln1, block.ln2):
                _replicate_params(norm, tp_mesh)
                norms.append(norm)
    model.register_forward_pre_hook(partial(_before_forward, tp_mesh=tp_mesh, sequence_parallel=sp, norms=norms))
    return model


def _block_plan(sp: bool) -> dict[str, object]:
    residual = Shard(1) if sp else Replicate()
    plan: dict[str, object] = {
        "attn.q": ColwiseParallel(),
        "attn.k": ColwiseParallel(),
        "attn.v": ColwiseParallel(),
        "attn.o": RowwiseParallel(output_layouts=residual, use_local_output=not sp),
        "mlp.up": ColwiseParallel(),
        "mlp.down": RowwiseParallel(output_layouts=residual, use_local_output=not sp),
    }
    if sp:  # gather the sequence before the projections; Attention takes (x, rope, m, cache, layer)
        plan["attn"] = PrepareModuleInput(
            input_layouts=(Shard(1), None, None, None, None),
            desired_input_layouts=(Replicate(), None, None, None, None),
            use_local_output=True,
        )
        plan["mlp"] = PrepareModuleInput(
            input_layouts=(Shard(1), None), desired_input_layouts=(Replicate(), None), use_local_output=True
        )
    return plan


def _replicate_params(module: nn.Module, mesh: DeviceMesh) -> None:
    """LayerNorm parameters as replicated DTensors, so they combine with sequence-sharded activations (their
    gradients, partial sums over each rank's tokens, are all-reduced by ``_reduce_partial_grad``). torch's
    SequenceParallel style would do this too, but it passes only the first forward argument on, and our
    LayerNorm also takes the growth mask."""

    def replicate(name: str, mod: nn.Module, mesh: DeviceMesh) -> None:
        for key, p in list(mod.named_parameters(recurse=False)):
            mod.register_parameter(key, nn.Parameter(distribute_tensor(p, mesh, [Replicate()], src_data_rank=None)))

    distribute_module(module, mesh, replicate)


def _hook_partial_grads(norms: list[nn.Module]) -> None:
    """A replicated parameter used on sequence shards gets a partial-sum gradient (each rank's tokens): have
    it all-reduced once, right after it is accumulated, so that clipping and the optimizer see the true
    gradient. Checked before every forward because ``to_empty`` (``materialize``) swaps tensors in place and
    drops their hooks. (FSDP2's sharded parameters never accumulate a gradient, so the hook is idle on them;
    FSDP2 reduces the gradients of its unsharded ones.)"""
    for module in norms:
        for param in module.parameters(recurse=False):
            if not getattr(param, "_flm_reduces_partial_grad", False):
                param.register_post_accumulate_grad_hook(_reduce_partial_grad)
                param._flm_reduces_partial_grad = True  # type: ignore[attr-defined]


def _reduce_partial_grad(param: Tensor) -> None:
    grad = param.grad
    if isinstance(grad, DTensor) and any(p.is_partial() for p in grad.placements):
        param.grad = grad.redistribute(placements=[Replicate()] * grad.device_mesh.ndim)


def _local_slice(mask: Tensor, full: int, mesh: DeviceMesh) -> Tensor:
    """This rank's slice of a mask over ``full`` units split evenly over ``mesh`` (already cut: unchanged)."""
    if mask.shape[0] != full:
        return mask
    n = full // mesh.size()
    start = mesh.get_local_rank() * n
    return mask[start : start + n]


def _before_forward(model: FLM, args: object, *, tp_mesh: DeviceMesh, sequence_parallel: bool,
                    norms: list[nn.Module]) -> None:
    """Root forward pre-hook: masks set since the last forward become this rank's slices (see the module
    doc); sequence-parallel LayerNorm parameters get their gradient hook."""
    _hook_partial_grads(norms)
    cfg = model.cfg
    for block in model.blocks.values():
        if block.attn.head_new is not None:
            block.attn.head_new = _local_slice(block.attn.head_new, cfg.n_heads, tp_mesh)
        if block.mlp.ffn_new is not None:
            block.mlp.ffn_new = _local_slice(block.mlp.ffn_new, cfg.d_ff, tp_mesh)  # type: ignore[arg-type]
    hidden = model.hidden_new
    if sequence_parallel and hidden is not None and not isinstance(hidden, DTensor):
        model.hidden_new = DTensor.from_local(hidden, tp_mesh, [Replicate()], run_check=False)


def growth_state(model: FLM, tp_mesh: DeviceMesh | None) -> dict[str, Tensor]:
    """``model.growth_state()`` with full masks (plain tensors) on every rank, for a checkpoint; a collective
    over ``tp_mesh`` when masks were cut to slices, so every tp rank calls it."""
    state = model.growth_state()
    cfg = model.cfg
    for key, t in state.items():
        if isinstance(t, DTensor):
            state[key] = t.full_tensor()
        elif tp_mesh is not None and key.endswith((".head_new", ".ffn_new")):
            full = cfg.n_heads if key.endswith(".head_new") else cfg.d_ff
            if t.shape[0] != full:
                gathered = DTensor.from_local(t.to(torch.uint8), tp_mesh, [Shard(0)], run_check=False)
                state[key] = gathered.full_tensor().bool()
    return state
