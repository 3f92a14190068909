"""Pipeline parallelism on ``torch.distributed.pipelining``: an FLM cut into stages by layer count and run
by the ``gpipe``, ``1f1b`` or ``interleaved_1f1b`` schedule (``parallel.pp_schedule``).

Split. The blocks are cut into ``n_stages = pp * v`` contiguous runs (v = 2 virtual stages per rank for
``interleaved_1f1b``, else 1); the first ``n_layers % n_stages`` stages take one block more, since the last
stage also carries the readout. Stage s runs on pp rank ``s % pp`` (the "loop" placement the interleaved
schedule expects). Each stage is an ``FLM`` holding only its blocks under their global names
("blocks.7.attn.q.weight" is the name it has in one process), the embedding on the first stage and the final
LayerNorm on the last, so μP parameter groups, checkpoints and growth state need no renaming. A stage module
can go through ``flm.distributed.parallelize`` (TP, activation checkpointing, compile, FSDP2 over dp) before
it is handed to ``Pipeline``, which wraps each in a ``PipelineStage`` on the pp process group.

Tied embedding, as Megatron does it. The readout on the last stage needs ``tok_emb.weight``, which lives on
the first. The last stage holds its own copy (also named ``tok_emb.weight``, used only by the readout:
``FLM.forward`` takes a floating-point input as hidden states and skips the embedding), created equal to the
original. After each backward the two gradients are all-reduced (summed) between the first and the last
stage, so both hold the gradient of the tied weight in one process, get the same clipping factor and the
same AdamW update, and stay bitwise equal. Gradient clipping counts the tied weight once. With loop
placement and pp >= 2 the first and the last stage are never on the same rank.

Loss. The last stage's forward computes the fused readout + masked cross-entropy itself
(``FLM.forward(h, targets=, loss_weights=)``: the readout weight is used inside the module's forward, where
FSDP2 has it unsharded). The schedule's ``loss_fn`` only divides by the global normaliser ``denom``, in fp32
outside the module (FSDP2 casts floating inputs to its param dtype; 0/1 masks survive that exactly, a
1/denom scale would not). Each micro-batch's loss is its part of ``sum(mask * CE) / denom``, and the
schedule runs with ``scale_grads=False``: the micro-batch gradients add up to the gradient of the whole
batch, and the sum of the micro-batch losses is the batch loss, as in one process.

Validation runs the stages forward only, by hand (send/recv of hidden states, the whole batch at once), so
the training schedule's state is left alone and any batch size works; the loss is broadcast from the last
stage to every pp rank.

Contract with the stage modules: between stages travel plain tensors of hidden states (batch, seq, d_model),
the same on every tp rank (tensor parallelism without sequence parallelism gives that). One ``Pipeline``
serves one batch shape (the schedule sizes its buffers on the first step): build a new one when it changes.

Use (every rank)::

    parts = split_model(model, pp_rank, pp, schedule)        # model: on the meta device or with weights
    for part in parts.values(): parallelize(part, ...)       # then materialize(part, ...) after a meta split
    pipe = Pipeline(parts, mesh, schedule, microbatches, device)
    opt = AdamW(pipe.param_groups(lr, wd))
    loss = pipe.step(x, y, mask, denom)    # one call per optimizer step: micro-batching is the schedule's
    norm = pipe.clip_grad_norm_(clip); opt.step(); opt.zero_grad(); ramp.step(pipe)
    pipe.eval(); val = pipe.eval_loss(x, y, mask); pipe.train()
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
from torch.distributed.tensor import DTensor

from flm.errors import FlmError
from flm.model import FLM
from flm.mup import canonical_name, param_groups

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved_1f1b": ScheduleInterleaved1F1B}
VIRTUAL_STAGES = {"gpipe": 1, "1f1b": 1, "interleaved_1f1b": 2}
TIED = "tok_emb.weight"


# ----- layout: pure functions ------------------------------------------------------------------------------
def num_stages(pp: int, schedule: str) -> int:
    return pp * VIRTUAL_STAGES[schedule]


def stage_layers(n_layers: int, n_stages: int) -> list[range]:
    """Contiguous runs of block indices, one per stage; the first ``n_layers % n_stages`` get one more."""
    base, extra = divmod(n_layers, n_stages)
    out, start = [], 0
    for s in range(n_stages):
        size = base + (s < extra)
        out.append(range(start, start + size))
        start += size
    return out


def stage_ids(pp_rank: int, pp: int, schedule: str) -> list[int]:
    """The stages pp rank ``pp_rank`` runs: ``pp_rank, pp_rank + pp, ...`` (loop placement)."""
    return [pp_rank + v * pp for v in range(VIRTUAL_STAGES[schedule])]


def check_layout(n_layers: int, pp: int, schedule: str, where: str = "parallel", model_key: str = "model") -> None:
    """Refuse an unknown schedule, or more stages than blocks (one line naming the key and the fix)."""
    if schedule not in SCHEDULES:
        raise FlmError(f"{where}.pp_schedule = {schedule!r} is unknown; use one of {', '.join(SCHEDULES)}")
    v = VIRTUAL_STAGES[schedule]
    if pp * v > n_layers:
        per = f" ({v} per rank with {schedule})" if v > 1 else ""
        alt = f" or {where}.pp_schedule = '1f1b'" if v > 1 and pp <= n_layers else ""
        raise FlmError(
            f"{where}.pp = {pp} makes {pp * v} pipeline stages{per} but {model_key}.n_layers = {n_layers}: every "
            f"stage needs at least one block; set {where}.pp <= {n_layers // v}{alt}"
        )


def check_microbatches(microbatches: int, pp: int, schedule: str, batch: int | None = None,
                       where: str = "parallel") -> None:
    """Refuse micro-batch counts the schedule cannot run or that do not divide ``batch`` (the sequences each
    pipeline step gets: the batch of one data-parallel rank)."""
    key = f"{where}.microbatches"
    if microbatches < 1:
        raise FlmError(f"{key} = {microbatches}; set it to 1 or more")
    if schedule == "1f1b" and microbatches < pp:
        raise FlmError(
            f"{key} = {microbatches} is fewer than the {pp} pipeline stages: 1f1b needs at "
            f"least one micro-batch per stage; set {key} >= {pp}"
        )
    rounds = max(1, microbatches // pp)
    if schedule == "interleaved_1f1b" and microbatches % rounds:
        raise FlmError(
            f"{key} = {microbatches} with pp = {pp}: interleaved_1f1b runs micro-batches in "
            f"rounds, so it needs a multiple of {rounds} here; set {key} to a multiple of {pp}"
        )
    if batch is not None and batch % microbatches:
        divisors = [d for d in range(1, batch + 1) if batch % d == 0]
        raise FlmError(
            f"{key} = {microbatches} does not divide the batch of {batch} sequences per "
            f"data-parallel rank; set it to one of {divisors} (or change train.batch_size)"
        )


def check_pipeline(n_layers: int, pp: int, schedule: str, microbatches: int, batch: int | None = None,
                   where: str = "parallel", model_key: str = "model") -> None:
    """Both checks: call before anything is written, with the per-data-parallel-rank batch."""
    check_layout(n_layers, pp, schedule, where, model_key)
    check_microbatches(microbatches, pp, schedule, batch, where)


# ----- split ----------------------------------------------------------------------------------------------
def split_model(model: FLM, pp_rank: int, pp: int, schedule: str) -> dict[int, FLM]:
    """This rank's stages of ``model``, by stage index. Each is an FLM holding the original block modules
    (no copy: ``model`` is taken apart and must not be used afterwards), the embedding on stage 0, the final
    LayerNorm and a copy of the embedding for the tied readout on the last stage. Works on a model on the
    meta device as well (materialise the copy with the same per-name values as the original)."""
    if pp < 2:
        raise ValueError(f"pipeline parallelism needs pp >= 2, got {pp}; train the model unsplit")
    cfg = model.cfg
    check_layout(len(model.blocks), pp, schedule)
    n = num_stages(pp, schedule)
    layers = stage_layers(len(model.blocks), n)
    ids = sorted(model.blocks, key=int)
    parts = {}
    for s in stage_ids(pp_rank, pp, schedule):
        with torch.device("meta"):  # a shell; every module it keeps is replaced by one of ``model``'s
            part = FLM(cfg)
        part.blocks = nn.ModuleDict({ids[i]: model.blocks[ids[i]] for i in layers[s]})
        part.tok_emb = model.tok_emb if s == 0 else copy.deepcopy(model.tok_emb) if s == n - 1 else None
        part.ln_f = model.ln_f if s == n - 1 else None
        part.grow_m = model.grow_m.clone()
        part.hidden_new = model.hidden_new
        part.readout_mult_from = model.readout_mult_from
        part.train(model.training)
        parts[s] = part
    return parts


def part_state(part: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The entries of a full (one-process) state dict or growth state that belong to one stage module."""
    own = set(part.state_dict()) | {"grow_m", "hidden_new", "readout_mult_from"}
    blocks = part.blocks  # type: ignore[attr-defined]
    return {
        k: v for k, v in state.items()
        if k in own or (k.startswith("blocks.") and k.split(".")[1] in blocks and k.count(".") == 2)
    }


def _first_last_group(mesh: DeviceMesh, pp_dim: str) -> dist.ProcessGroup | None:
    """The process group of this rank's first and last pp rank (None on the middle ranks). Every rank of
    the world must call this (new groups are created collectively when pp > 2)."""
    pp = mesh.size(mesh.mesh_dim_names.index(pp_dim))  # type: ignore[union-attr]
    if pp == 2:
        return mesh.get_group(pp_dim)
    if mesh.mesh.numel() != dist.get_world_size():
        raise ValueError("pass the whole device mesh (not a sub-mesh) so every pp group can be enumerated")
    dim = mesh.mesh_dim_names.index(pp_dim)  # type: ignore[union-attr]
    rows = mesh.mesh.movedim(dim, -1).reshape(-1, pp).tolist()
    group, _ = dist.new_subgroups_by_enumeration([[r[0], r[-1]] for r in rows])
    return group


def _by_mesh(tensors: Iterable[Tensor]) -> list[list[Tensor]]:
    """Tensors grouped by DTensor mesh (plain tensors together): foreach kernels take no mix of the two."""
    groups: dict[object, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.device_mesh if isinstance(t, DTensor) else None, []).append(t)
    return list(groups.values())


def _scaled_loss(out: Tensor, target: Tensor, denom: float = 1.0) -> Tensor:
    """The schedule's loss_fn: the last stage already returns sum(mask * CE) over its micro-batch."""
    return out / denom


# ----- the running pipeline --------------------------------------------------------------------------------
class StageParts:
    """What a set of stage modules (``self.parts``) does as one FLM would: train/eval mode and the growth masks
    (``MaskRamp`` drives ``set_mask_value`` / ``end_growth``)."""

    parts: dict[int, FLM]

    def train(self, mode: bool = True) -> StageParts:
        for part in self.parts.values():
            part.train(mode)
        return self

    def eval(self) -> StageParts:
        return self.train(False)

    def set_mask_value(self, m: float) -> None:
        for part in self.parts.values():
            part.set_mask_value(m)

    def end_growth(self) -> None:
        for part in self.parts.values():
            part.end_growth()

    @property
    def growing(self) -> bool:
        return any(part.growing for part in self.parts.values())


class Pipeline(StageParts):
    """This rank's stages, their ``PipelineStage`` wrappers on the pp group of ``mesh`` and the schedule.

    ``parts``: ``split_model``'s output, each module possibly parallelized since. The same object has the
    growth-mask methods of an FLM (``set_mask_value``, ``end_growth``, ...), so ``MaskRamp.step(pipeline)``
    works unchanged."""

    def __init__(
        self,
        parts: Mapping[int, FLM],
        mesh: DeviceMesh,
        schedule: str,
        microbatches: int,
        device: torch.device,
        pp_dim: str = "pp",
    ) -> None:
        names = mesh.mesh_dim_names or ()
        if pp_dim not in names:
            raise ValueError(f"the device mesh has no {pp_dim!r} dimension (it has {names})")
        self.group = mesh.get_group(pp_dim)
        self.pp = mesh.size(names.index(pp_dim))
        self.pp_rank = mesh.get_local_rank(pp_dim)
        self.n_stages = num_stages(self.pp, schedule)
        if sorted(parts) != stage_ids(self.pp_rank, self.pp, schedule):
            raise ValueError(f"pp rank {self.pp_rank} got stages {sorted(parts)}, expected "
                             f"{stage_ids(self.pp_rank, self.pp, schedule)}")
        self.cfg = next(iter(parts.values())).cfg
        check_pipeline(self.cfg.n_layers, self.pp, schedule, microbatches)
        self.parts = dict(sorted(parts.items()))
        self.schedule_name = schedule
        self.microbatches = microbatches
        self.device = device
        self.stages = [PipelineStage(m, s, self.n_stages, device, group=self.group) for s, m in self.parts.items()]
        cls = SCHEDULES[schedule]
        run = self.stages[0] if VIRTUAL_STAGES[schedule] == 1 else self.stages
        self.schedule = cls(run, microbatches, loss_fn=_scaled_loss, scale_grads=False)  # type: ignore[arg-type]
        self.first = self.parts.get(0)
        self.last = self.parts.get(self.n_stages - 1)
        self._tied_group = _first_last_group(mesh, pp_dim)

    # ----- training ----------------------------------------------------------------------------------------
    def step(self, tokens: Tensor, targets: Tensor, loss_weights: Tensor, denom: float = 1.0) -> Tensor:
        """Forward and backward of one batch (this data-parallel rank's) through the schedule; gradients
        accumulate into the stage parameters as ``(sum(loss_weights * CE) / denom).backward()`` would in one
        process, and the tied embedding's two copies get the same, summed gradient. Returns that loss (fp32,
        detached) on every pp rank. Every pp rank passes the same batch; only the first stage reads
        ``tokens`` and only the last reads ``targets`` and ``loss_weights``."""
        check_microbatches(self.microbatches, self.pp, self.schedule_name, tokens.shape[0])
        losses: list[Tensor] = []
        self.schedule.step(
            tokens, target=targets, losses=losses, return_outputs=False, loss_kwargs={"denom": float(denom)},
            targets=targets, loss_weights=loss_weights,
        )
        self.sync_tied_grads()
        loss = torch.stack(losses).sum().detach().float() if losses else torch.zeros((), device=self.device)
        dist.broadcast(loss, group=self.group, group_src=self.pp - 1)
        return loss

    def sync_tied_grads(self) -> None:
        """Sum the gradients of the embedding (first stage) and its readout copy (last stage). Under FSDP2 / TP
        the two are sharded alike (over the same dp / tp coordinates), so the local shards correspond."""
        if self._tied_group is None:
            return
        part = self.first if self.first is not None else self.last
        assert part is not None and part.tok_emb is not None
        w = part.tok_emb.weight
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        if isinstance(w.grad, DTensor) and w.grad.placements != w.placements:  # e.g. a Replicate grad under TP
            w.grad = w.grad.redistribute(w.device_mesh, w.placements)  # type: ignore[union-attr]
        g = w.grad
        dist.all_reduce(g.to_local() if isinstance(g, DTensor) else g, group=self._tied_group)

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """Clip all stages' gradients by their global 2-norm (over pp and, for DTensors, dp/tp), counting the
        tied embedding once; returns the norm before clipping, the same on every rank."""
        sq = torch.zeros((), dtype=torch.float64, device=self.device)
        for grads in _by_mesh(p.grad for p in self._params(include_copy=False) if p.grad is not None):
            norm = torch.nn.utils.get_total_norm(grads)
            sq += (norm.full_tensor() if isinstance(norm, DTensor) else norm).double().square()
        dist.all_reduce(sq, group=self.group)
        total = sq.sqrt().float()
        if math.isfinite(max_norm):
            for params in _by_mesh(p for p in self._params() if p.grad is not None):
                torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """μP AdamW groups of every local stage (flm.mup classifies by name; names are the global ones)."""
        return [g for part in self.parts.values() for g in param_groups(part, lr, weight_decay)]

    def parameters(self) -> Iterator[nn.Parameter]:
        return self._params()

    def _params(self, include_copy: bool = True) -> Iterator[nn.Parameter]:
        for s, part in self.parts.items():
            for name, p in part.named_parameters():
                if include_copy or not self._is_copy(s, name):
                    yield p

    def _is_copy(self, stage: int, name: str) -> bool:
        """Whether ``name`` on ``stage`` is the last stage's readout copy of the embedding."""
        return stage == self.n_stages - 1 and canonical_name(name) == TIED

    # ----- forward only -------------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, tokens: Tensor, **last_kwargs: Tensor) -> Tensor | None:
        """The whole batch through the stages, forward only; ``last_kwargs`` go to the last stage
        (``targets=, loss_weights=`` for the loss, nothing for logits). Returns the last stage's output on
        the rank that holds it, None elsewhere. Every pp rank passes the same ``tokens``."""
        out = None
        for s, part in self.parts.items():
            if s == 0:
                x = tokens
            else:  # hidden states travel in fp32 whatever the stage computes in
                x = torch.empty((*tokens.shape, self.cfg.d_model), dtype=torch.float32, device=self.device)
                dist.recv(x, group=self.group, group_src=(s - 1) % self.pp)
            last = s == self.n_stages - 1
            out = part(x, **(last_kwargs if last else {}))
            if not last:
                h = out.full_tensor() if isinstance(out, DTensor) else out
                dist.send(h.float().contiguous(), group=self.group, group_dst=(s + 1) % self.pp)
        return out if self.last is not None else None

    def eval_loss(self, tokens: Tensor, targets: Tensor, loss_weights: Tensor) -> Tensor:
        """``sum(loss_weights * CE)`` over the batch (fp64, no normalisation), on every pp rank: the
        validation counterpart of ``model(x, targets=y, loss_weights=mask)``. Call ``eval()`` first."""
        out = self.forward(tokens, targets=targets, loss_weights=loss_weights)
        loss = torch.zeros((), dtype=torch.float64, device=self.device) if out is None else out.double()
        dist.broadcast(loss, group=self.group, group_src=self.pp - 1)
        return loss

    # ----- growth masks and state, as on one FLM ---------------------------------------------------------
    def growth_state(self) -> dict[str, Tensor]:
        """This rank's part of ``FLM.growth_state()``; the union over the pp ranks is the whole of it."""
        return {k: v for part in self.parts.values() for k, v in part.growth_state().items()}

    def load_growth_state(self, state: Mapping[str, Tensor]) -> None:
        """Load a whole model's growth state (each stage takes its own blocks' masks)."""
        for part in self.parts.values():
            part.load_growth_state(part_state(part, state))

    def owned_state_dict(self) -> dict[str, Tensor]:
        """This rank's parameters and persistent buffers under their one-process names, without the readout
        copy of the embedding: the union over the pp ranks is the one-process ``state_dict()``. Under FSDP2 /
        TP the values are DTensors."""
        return {
            canonical_name(k): v for s, part in self.parts.items() for k, v in part.state_dict().items()
            if not self._is_copy(s, k)
        }

    def full_state_dict(self) -> dict[str, Tensor] | None:
        """The one-process state dict (plain CPU tensors) on pp rank 0 of this rank's pp group, None on the
        others. Collective: every rank calls it (DTensors are gathered over their dp/tp meshes first)."""
        local = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu()
                 for k, v in self.owned_state_dict().items()}
        return self._gather_to_first(local)

    def full_growth_state(self) -> dict[str, Tensor] | None:
        """``FLM.growth_state()`` of the whole model on pp rank 0, None on the others (collective over pp)."""
        return self._gather_to_first({k: v.detach().cpu() for k, v in self.growth_state().items()})

    def _gather_to_first(self, local: dict[str, Tensor]) -> dict[str, Tensor] | None:
        pieces: list | None = [None] * self.pp if self.pp_rank == 0 else None
        dist.gather_object(local, pieces, group=self.group, group_dst=0)
        return None if pieces is None else {k: v for piece in pieces for k, v in piece.items()}
