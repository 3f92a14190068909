"""``ParallelModel``: the model as this rank holds it under the layout of a ``DistEnv``, with the few operations
the trainer needs, the same for every layout. It is the thin runtime; building it is ``build.py`` and its
checkpoint state ``flm.checkpoint.model_state``.

- ``forward_backward(batches, denom)``: the gradients of ``sum(mask * CE) / denom`` over this data-parallel
  rank's micro-batches (a pipeline runs them through its schedule); FSDP2 averages over dp.
- ``eval_loss``, ``clip_grad_norm_``, ``param_groups`` (μP), growth masks (``set_mask_value``, ``end_growth``:
  what ``MaskRamp`` drives), ``train()`` / ``eval()``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from flm.config import ModelConfig, TrainConfig
from flm.distributed.build import build_parts
from flm.distributed.clip import clip_grad_norm_
from flm.distributed.env import DistEnv
from flm.distributed.pipeline import StageParts, part_state
from flm.model import FLM
from flm.mup import param_groups

Batch = tuple[Tensor, ...]  # tokens, targets, loss mask, and under data.document_mask each position's document


class ParallelModel(StageParts):
    """This rank's part of the model under ``env``'s layout (see the module doc); ``parts`` maps pipeline stage
    index -> FLM module (one entry, stage 0, without pipeline parallelism)."""

    def __init__(self, cfg: ModelConfig, env: DistEnv, train: TrainConfig, *, seed: int, bf16: bool = False,
                 state: Mapping[str, Tensor] | None = None, growth: Mapping[str, Tensor] | None = None) -> None:
        self.cfg, self.env, self.bf16 = cfg, env, bf16
        self.parts, self.pipeline = build_parts(cfg, env, train, seed=seed, bf16=bf16, state=state)
        if growth:  # a grown model's masks, at the ramp's start
            self.load_growth_state(growth)

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
            x, y, mk = (torch.cat(t).to(dev) for t in zip(*batches))  # no document ids: refused under pp
            with self.autocast():
                return self.pipeline.step(x, y, mk, float(denom))
        model = self.module
        total = torch.zeros((), device=dev)
        # FSDP2 reduce-scatters after every micro-batch: skipping the sync until the last one would keep a
        # whole unsharded gradient per rank for the step, the largest memory term at FLM-101B's size
        for x, y, mk, *docs in batches:  # docs: the loader's document ids under data.document_mask
            with self.autocast():
                loss = model(x.to(dev), targets=y.to(dev), loss_weights=mk.to(dev), **self._docs(docs)).float() / denom
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
    def eval_loss(self, x: Tensor, y: Tensor, mask: Tensor, *docs: Tensor) -> Tensor:
        """``sum(mask * CE)`` over a batch (fp64), on every tp and pp rank; call ``eval()`` first. ``docs``: the
        batch's document ids under data.document_mask."""
        dev = self.env.device
        x, y, mask = x.to(dev), y.to(dev), mask.to(dev)
        with self.autocast():
            if self.pipeline is not None:
                return self.pipeline.eval_loss(x, y, mask)
            return self.module(x, targets=y, loss_weights=mask, **self._docs(docs)).double()

    def _docs(self, docs: Sequence[Tensor]) -> dict[str, Tensor]:
        """The model's ``doc_ids`` argument: the document ids a batch came with (none: plain causal attention)."""
        return {"doc_ids": docs[0].to(self.env.device)} if docs else {}

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
