"""``ParallelModel``: the model as this rank holds it under the layout of a ``DistEnv``, with the few operations
the trainer needs, the same for every layout.

Built on the meta device, split into pipeline stages (pp > 1), parallelized (TP -> activation checkpointing
-> compile -> FSDP2), then materialised: from the per-tensor-seeded initial values (bitwise the same full
weights in one process and under any layout), or from a full state dict (a checkpoint, a grown model).

- ``forward_backward(batches, denom)``: the gradients of ``sum(mask * CE) / denom`` over this data-parallel
  rank's micro-batches (a pipeline runs them through its schedule); FSDP2 averages over dp.
- ``eval_loss``, ``clip_grad_norm_``, ``param_groups`` (μP), growth masks (``set_mask_value``, ``end_growth``:
  what ``MaskRamp`` drives), ``train()`` / ``eval()``.
- Checkpoint state as full tensors keyed by one-process parameter names: ``full_model_state``,
  ``full_optim_state``, ``full_growth_state`` gather to global rank 0 (collective: every rank calls them);
  the ``load_*`` methods take the full state on every rank and keep each rank's shard. (Whole-model gathers
  suit a model that fits one host's memory; beyond that, ``save_sharded`` / ``load_sharded``: each rank
  writes and reads its own shards with torch.distributed.checkpoint.)
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor

from flm.config import ModelConfig, TrainConfig
from flm.data.packing import document_ids
from flm.distributed.clip import clip_grad_norm_
from flm.distributed.env import DistEnv
from flm.distributed.init import copy_local, copy_shard, local_region, materialize, meta_model
from flm.distributed.parallelize import parallelize
from flm.distributed.pipeline import Pipeline, StageParts, part_state, split_model
from flm.distributed.tensor_parallel import growth_state
from flm.growth.region import RegionSource
from flm.growth.tensorio import DcpReader
from flm.model import FLM
from flm.mup import canonical_name, param_groups

Batch = tuple[Tensor, Tensor, Tensor]  # tokens, targets, loss mask


class ParallelModel(StageParts):
    """This rank's part of the model under ``env``'s layout (see the module doc); ``parts`` maps pipeline stage
    index -> FLM module (one entry, stage 0, without pipeline parallelism)."""

    def __init__(self, cfg: ModelConfig, env: DistEnv, train: TrainConfig, *, seed: int, bf16: bool = False,
                 state: Mapping[str, Tensor] | None = None, growth: Mapping[str, Tensor] | None = None,
                 document_eos: int | None = None) -> None:
        dims, mesh = env.dims, env.mesh
        self.cfg, self.env, self.bf16 = cfg, env, bf16
        self.document_eos = document_eos  # data.document_mask: attention stays inside the documents EOS ends
        model = meta_model(cfg)
        if dims.pp > 1:
            assert mesh is not None
            parts = split_model(model, mesh["pp"].get_local_rank(), dims.pp, dims.pp_schedule)
        else:
            parts = {0: model}
        for part in parts.values():
            parallelize(part, dims, mesh, train, bf16)
            materialize(part, env.device, seed, state)
        self.parts = parts
        self.pipeline = None
        if dims.pp > 1:
            assert mesh is not None
            self.pipeline = Pipeline(parts, mesh, dims.pp_schedule, dims.microbatches, env.device)
        if growth:
            self.load_growth_state(growth)
        self._writer: ThreadPoolExecutor | None = None  # background checkpoint writes

    @property
    def module(self) -> FLM:
        """The one FLM of a layout without pipeline stages."""
        assert self.pipeline is None, "a pipeline has several stage modules"
        return self.parts[0]

    # ----- training ---------------------------------------------------------------------------------------
    def autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def forward_backward(self, batches: Sequence[Batch], denom: Tensor) -> Tensor:
        """Accumulate the gradients of ``sum(mask * CE) / denom`` over ``batches`` (this data-parallel rank's
        micro-batches); returns that loss (detached, fp32), the same on every tp and pp rank. The division
        happens outside the model, in fp32 (FSDP2 with bf16 casts floating inputs, which 0/1 masks survive)."""
        dev = self.env.device
        if self.pipeline is not None:  # the schedule does the micro-batching (parallel.microbatches)
            x, y, mk = (torch.cat(t).to(dev) for t in zip(*batches))
            with self.autocast():
                return self.pipeline.step(x, y, mk, float(denom))
        model = self.module
        total = torch.zeros((), device=dev)
        # FSDP2 reduce-scatters after every micro-batch: skipping the sync until the last one would keep a
        # whole unsharded gradient per rank for the step, the largest memory term at FLM-101B's size
        for x, y, mk in batches:
            with self.autocast():
                loss = model(x.to(dev), targets=y.to(dev), loss_weights=mk.to(dev), **self._docs(x)).float() / denom
            loss.backward()
            total += loss.detach()
        return total

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """Clip by the global gradient norm (no clipping for ``max_norm`` <= 0); the norm before clipping."""
        if self.pipeline is not None:
            return self.pipeline.clip_grad_norm_(max_norm if max_norm > 0 else math.inf)
        if not self.env.distributed:
            return torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm if max_norm > 0 else math.inf)
        return clip_grad_norm_(self.module.parameters(), max(max_norm, 0.0), self.env.dims)

    @torch.no_grad()
    def eval_loss(self, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """``sum(mask * CE)`` over a batch (fp64), on every tp and pp rank; call ``eval()`` first."""
        dev = self.env.device
        x, y, mask = x.to(dev), y.to(dev), mask.to(dev)
        with self.autocast():
            if self.pipeline is not None:
                return self.pipeline.eval_loss(x, y, mask)
            return self.module(x, targets=y, loss_weights=mask, **self._docs(x)).double()

    def _docs(self, x: Tensor) -> dict[str, Tensor]:
        """The model's ``doc_ids`` argument under document masking (nothing otherwise)."""
        if self.document_eos is None:
            return {}
        return {"doc_ids": document_ids(x, self.document_eos).to(self.env.device)}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """μP AdamW groups over every local stage (parameters keep their one-process names), each split by
        DTensor mesh: fused AdamW takes no mix of DTensors and plain tensors (tensor parallel's replicated
        LayerNorms) in one group."""
        out = []
        for part in self.parts.values():
            for group in param_groups(part, lr, weight_decay):
                kinds: dict[object, tuple[list, list]] = {}
                for p, name in zip(group["params"], group["names"]):
                    params, names = kinds.setdefault(p.device_mesh if isinstance(p, DTensor) else None, ([], []))
                    params.append(p)
                    names.append(name)
                out += [group | {"params": params, "names": names} for params, names in kinds.values()]
        return out

    # ----- growth masks, as on one FLM ---------------------------------------------------------------------
    def load_growth_state(self, state: Mapping[str, Tensor]) -> None:
        """A whole model's growth state (masks are cut to each rank's heads, units and blocks)."""
        for part in self.parts.values():
            part.load_growth_state(part_state(part, state) if self.pipeline is not None else dict(state))

    def drop_silent_grads(self, optimizer: torch.optim.Optimizer) -> None:
        """At m = 0 a new block (``Block.depth_new``) gets exactly zero gradient. While it has no AdamW state,
        drop that gradient (None): AdamW then neither counts the step nor decays the block, so its step count
        starts at its first non-zero gradient and its first real update is the one a fresh AdamW would make
        (a zero-gradient first step would leave it at ~0.73x). Call between backward and ``optimizer.step``."""
        for part in self.parts.values():
            for block in part.blocks.values():
                if block.depth_new is not None:
                    for p in block.parameters():
                        if not optimizer.state.get(p):
                            p.grad = None

    # ----- full state for checkpoints --------------------------------------------------------------------------
    def _named_parameters(self, include_copy: bool = False) -> Iterator[tuple[str, nn.Parameter]]:
        """(one-process name, parameter) of every local stage; the last pipeline stage's readout copy of the
        embedding only with ``include_copy`` (it is saved once, as the first stage's). FSDP2 modules are
        resharded first: a pipeline stage (reshard_after_forward=False) may still hold its unsharded parameters,
        which are not the ones the optimizer updates."""
        for part in self.parts.values():
            for module in part.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()
        for s, part in self.parts.items():
            for name, p in part.named_parameters():
                key = canonical_name(name)
                if include_copy or self.pipeline is None or not self.pipeline._is_copy(s, key):
                    yield key, p

    def _to_rank0(self, local: dict[str, Any]) -> dict[str, Any] | None:
        """The union of every pp rank's ``local`` on global rank 0 (which is pp rank 0); None elsewhere."""
        if self.pipeline is not None:
            pieces: list | None = [None] * self.env.dims.pp if self.pipeline.pp_rank == 0 else None
            dist.gather_object(local, pieces, group=self.pipeline.group, group_dst=0)
            local = {} if pieces is None else {k: v for piece in pieces for k, v in piece.items()}
        return local if self.env.is_main else None

    @property
    def _keeper(self) -> bool:
        """Whether this rank keeps its stage's gathered tensors (dp rank 0, tp rank 0): gathering is a
        collective over dp and tp, but one copy per pipeline stage is all rank 0 needs."""
        mesh = self.env.mesh
        return mesh is None or (mesh["dp"].get_local_rank() == 0 and mesh["tp"].get_local_rank() == 0)

    def _gather(self, t: Tensor) -> Tensor | None:
        full = _full(t)  # collective: every rank of the stage takes part
        return full if self._keeper else None

    def full_model_state(self) -> dict[str, Tensor] | None:
        local = {k: self._gather(p) for k, p in self._named_parameters()}
        return self._to_rank0({k: v for k, v in local.items() if v is not None})

    def full_optim_state(self, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], int] | None:
        """AdamW moments keyed "exp_avg/<param>", "exp_avg_sq/<param>" and the step count (0 and no tensors
        before the first step)."""
        tensors: dict[str, Tensor] = {}
        step = 0
        for key, p in self._named_parameters():
            st = optimizer.state.get(p)
            if st:
                step = max(step, int(st["step"]))  # a block a growth added counts from 0 (optim_steps)
                for kind in ("exp_avg", "exp_avg_sq"):
                    if (full := self._gather(st[kind])) is not None:
                        tensors[f"{kind}/{key}"] = full
        gathered = self._to_rank0(tensors)  # every parameter takes every step: one step count for all
        return None if gathered is None else (gathered, step)

    def optim_step(self, optimizer: torch.optim.Optimizer) -> int:
        """AdamW's step count (every parameter takes every step); 0 before the first step."""
        return next((int(st["step"]) for _, p in self._named_parameters() if (st := optimizer.state.get(p))), 0)

    def optim_steps(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """optim.json's step counts on global rank 0 (collective under pp): ``{"step": the largest}``, plus
        ``"param_steps"``: the tensors whose own count differs (blocks a growth added start at 0)."""
        local = {k: int(st["step"]) for k, p in self._named_parameters() if (st := optimizer.state.get(p))}
        steps = self._to_rank0(local)
        if steps is None:
            return None
        top = max(steps.values(), default=0)
        differ = {k: v for k, v in steps.items() if v != top}
        return {"step": top, "param_steps": differ} if differ else {"step": top}

    def full_growth_state(self) -> dict[str, Tensor] | None:
        tp_mesh = self.env.mesh["tp"] if self.env.dims.tp > 1 and self.env.mesh is not None else None
        local = {k: v.detach().cpu() for part in self.parts.values() for k, v in growth_state(part, tp_mesh).items()}
        return self._to_rank0(local)

    def load_model_state(self, state: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            for key, p in self._named_parameters(include_copy=True):
                copy_shard(p, state[key].to(p.device, p.dtype))

    def load_optim_state(self, optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], step: int,
                         param_steps: Mapping[str, int] | None = None) -> None:
        """AdamW moments from full tensors (each rank keeps its shard); parameters without saved moments start
        fresh (step 0). The step count is ``param_steps[name]`` or else ``step``, fp32 on the parameter's
        device, as fused AdamW keeps it."""
        steps = param_steps or {}
        for key, p in self._named_parameters(include_copy=True):
            if f"exp_avg/{key}" not in tensors:
                continue
            optimizer.state[p] = self._adam_state(steps.get(key, step), _shard_of(p, tensors, f"exp_avg/{key}"),
                                                  _shard_of(p, tensors, f"exp_avg_sq/{key}"))

    def _adam_state(self, step: int, exp_avg: Tensor, exp_avg_sq: Tensor) -> dict[str, Tensor]:
        """One parameter's AdamW state as fused AdamW keeps it (the step count fp32 on the device)."""
        step_t = torch.tensor(float(step), dtype=torch.float32, device=self.env.device)
        return {"step": step_t, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


    # ----- sharded state (each rank its own shards: torch.distributed.checkpoint) -------------------------------
    def sharded_state(self, optimizer: torch.optim.Optimizer, create: Collection[str] | None = None
                      ) -> tuple[dict, dict]:
        """(model, moments) as this rank holds them, keyed like the full state ("exp_avg/<param>", ...);
        ``create``: the moment names to give zero state where the optimizer has none yet, for a load to fill
        (parameters the checkpoint holds no moments for start fresh, as in ``load_optim_state``)."""
        model: dict[str, Tensor] = {}
        moments: dict[str, Tensor] = {}
        for key, p in self._named_parameters(include_copy=True):
            model[key] = p
            st = optimizer.state.get(p)
            if not st and create is not None and f"exp_avg/{key}" in create:
                st = optimizer.state[p] = self._adam_state(0, torch.zeros_like(p), torch.zeros_like(p))
            if st:
                moments[f"exp_avg/{key}"], moments[f"exp_avg_sq/{key}"] = st["exp_avg"], st["exp_avg_sq"]
        return model, moments

    def save_sharded(self, model_dir: Path, optim_dir: Path, optimizer: torch.optim.Optimizer,
                     background: dist.ProcessGroup | bool | None = None) -> list[Future]:
        """Every rank writes its shards of the weights and the moments (collective; a shard held by several
        ranks, e.g. a replicated LayerNorm under tp, is written once). ``background``: copy the shards now and
        write them in a background thread (on a process group of its own under torchrun, so its collectives
        never meet training's); returns the futures to wait for. (Not ``dcp.async_save``: two of them, weights
        and moments, run their collectives in two threads on one group, which can deadlock.)"""
        model, moments = self.sharded_state(optimizer)
        one = not self.env.distributed
        parts = [(model, model_dir)] + ([(moments, optim_dir)] if moments else [])
        if background is None or background is False:
            for state, folder in parts:
                _dcp_save(state, folder, one)
            return []
        group = None if background is True else background
        copies = [({k: v.detach().clone() for k, v in state.items()}, folder) for state, folder in parts]

        def write() -> None:  # one thread, one save after the other: their collectives never interleave
            for state, folder in copies:
                _dcp_save(state, folder, one, group)

        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="flm-checkpoint")
        return [self._writer.submit(write)]

    @torch.no_grad()
    def load_sharded(self, model_dir: Path, optim_dir: Path, optimizer: torch.optim.Optimizer, step: int,
                     param_steps: Mapping[str, int] | None = None) -> None:
        """Weights and moments from a sharded checkpoint written under any layout (DCP reshards): each rank
        reads only the pieces of its own shards; step counts as in ``load_optim_state``."""
        saved = set(DcpReader(optim_dir).shapes) if (optim_dir / ".metadata").is_file() else set()
        model, moments = self.sharded_state(optimizer, create=saved)
        one = not self.env.distributed
        dcp.load(model, checkpoint_id=model_dir, no_dist=one)
        if moments:
            dcp.load(moments, checkpoint_id=optim_dir, no_dist=one)
            steps = param_steps or {}
            for key, p in self._named_parameters(include_copy=True):
                if p in optimizer.state:
                    optimizer.state[p]["step"].fill_(float(steps.get(key, step)))

    def close(self) -> None:
        """Wait for background checkpoint writes and stop their thread."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None


def _full(t: Tensor) -> Tensor:
    """A full CPU copy (DTensors gathered over their mesh: collective)."""
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu().clone()


def _shard_of(p: Tensor, tensors: Mapping[str, Tensor], name: str) -> Tensor:
    """``tensors[name]`` laid out as ``p`` is (the same DTensor placements, this rank's shard), on p's device;
    from a ``RegionSource`` only this rank's box is built."""
    if isinstance(tensors, RegionSource):
        out = torch.zeros_like(p)
        copy_local(out, tensors.region(name, local_region(p)))
        return out
    full = tensors[name].to(p.device, p.dtype)
    if isinstance(p, DTensor):
        return distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)
    return full.clone()


def _dcp_save(state: dict, folder: Path, one: bool, group: dist.ProcessGroup | None = None) -> None:
    with warnings.catch_warnings():  # one process: "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=folder, process_group=group, no_dist=one)
