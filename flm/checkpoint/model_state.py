"""A ``ParallelModel``'s checkpoint state: the model, its AdamW moments and growth masks as full tensors
keyed by one-process parameter names, or as each rank's own shards.

- Full: ``full_model_state``, ``full_optim_state``, ``full_growth_state`` gather to global rank 0
  (collective: every rank calls them); the ``load_*`` methods take the full state on every rank and keep each
  rank's shard. Whole-model gathers suit a model that fits one host's memory.
- Sharded: ``save_sharded`` / ``load_sharded``: each rank writes and reads its own shards with
  torch.distributed.checkpoint (DCP reshards, so a checkpoint loads under any layout), in the background if
  asked (one writer thread per model).

The ``CheckpointManager`` (manager.py) is its user: the model is one of the parts it saves and restores.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor

from flm.distributed.init import copy_local, copy_shard, local_region
from flm.distributed.parallel_model import ParallelModel
from flm.distributed.tensor_parallel import growth_state
from flm.mup import canonical_name
from flm.tensorio import DcpReader, RegionSource


class ModelState:
    """The checkpoint state of ``model`` (see the module doc). Every method that gathers or writes is a
    collective: every rank calls it."""

    def __init__(self, model: ParallelModel) -> None:
        self.model = model
        self._writer: ThreadPoolExecutor | None = None  # background checkpoint writes

    def _named_parameters(self, include_copy: bool = False) -> Iterator[tuple[str, nn.Parameter]]:
        """(one-process name, parameter) of every local stage; the last pipeline stage's readout copy of the
        embedding only with ``include_copy`` (it is saved once, as the first stage's). FSDP2 modules are
        resharded first: a pipeline stage (reshard_after_forward=False) may still hold its unsharded parameters,
        which are not the ones the optimizer updates."""
        for part in self.model.parts.values():
            for module in part.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()
        for s, part in self.model.parts.items():
            for name, p in part.named_parameters():
                key = canonical_name(name)
                if include_copy or self.model.pipeline is None or not self.model.pipeline._is_copy(s, key):
                    yield key, p

    def _to_rank0(self, local: dict[str, Any]) -> dict[str, Any] | None:
        """The union of every pp rank's ``local`` on global rank 0 (which is pp rank 0); None elsewhere."""
        if self.model.pipeline is not None:
            pieces: list | None = [None] * self.model.env.dims.pp if self.model.pipeline.pp_rank == 0 else None
            dist.gather_object(local, pieces, group=self.model.pipeline.group, group_dst=0)
            local = {} if pieces is None else {k: v for piece in pieces for k, v in piece.items()}
        return local if self.model.env.is_main else None

    @property
    def _keeper(self) -> bool:
        """Whether this rank keeps its stage's gathered tensors (dp rank 0, tp rank 0): gathering is a
        collective over dp and tp, but one copy per pipeline stage is all rank 0 needs."""
        mesh = self.model.env.mesh
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
        env = self.model.env
        tp_mesh = env.mesh["tp"] if env.dims.tp > 1 and env.mesh is not None else None
        parts = self.model.parts.values()
        local = {k: v.detach().cpu() for part in parts for k, v in growth_state(part, tp_mesh).items()}
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
        step_t = torch.tensor(float(step), dtype=torch.float32, device=self.model.env.device)
        return {"step": step_t, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}

    # ----- sharded state (each rank its own shards: torch.distributed.checkpoint) ----------------------------
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
        one = not self.model.env.distributed
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
        one = not self.model.env.distributed
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
