"""The memory planner behind `flm cost --memory`: bytes per device of every stage of a plan, for its layout.

Per rank (the worst rank of the layout: the first pipeline rank and data-parallel rank 0, which hold the most):

- parameters: fp32 master weights, tensor-parallel shards (q, k, v, mlp.up column-wise; attn.o, mlp.down
  row-wise; their biases and the LayerNorms replicated; the embedding split over the vocabulary), then dim 0
  of every tensor chunked over dp by FSDP2 (``torch.chunk``: rank 0 gets ``ceil(rows / dp)``). A pipeline rank
  holds its stages' blocks (``flm.distributed.pipeline.stage_layers``), the first stage the embedding, the last
  the final LayerNorm and a copy of the embedding for the tied readout.
- gradients: fp32, sharded like the parameters.
- optimizer: AdamW's two fp32 moments plus its fp32 step count per tensor (fused AdamW keeps one per tensor).
- compute copies: what FSDP2 all-gathers (in bf16 under its mixed-precision policy when training in bf16):
  without pipeline parallelism the root (embedding) for the whole step and two blocks at a time (the current
  one and the prefetched one); under pipeline parallelism the whole local stage (flm keeps it gathered,
  ``reshard_after_forward=False``, and the schedule keeps it through the micro-batches). In one data-parallel
  rank under bf16: autocast's bf16 copies of the weight matrices, kept for the backward.
- accumulated gradients: when gradients are reduced once per step over several micro-batches (dp > 1 and
  several micro-batches: flm's ``forward_backward`` and the pipeline schedule do so), FSDP2 accumulates
  unsharded fp32 gradients of every local parameter until the last one.
- activations: what autograd keeps per token and block (below), times the tokens of one micro-batch, times
  the micro-batches a pipeline rank holds in flight (gpipe: all; 1f1b: min(micro-batches, pp) on the first
  rank; interleaved: Megatron's (1 + (pp - 1) / (pp · v)) times that); checkpointed blocks keep only their
  input, plus one block's activations while it is recomputed; plus the readout's saved gradients and the
  chunked loss's workspace on the last stage.
- growth: at a stage that grows, the old and the new model with their moments as full tensors (what each rank
  holds today, growing in memory) and as the old and new layouts' shards (growth in sharded form).

`flm plan layout` with ``dp_mode`` zero1 or ddp (cost.dp_mode, --dp-mode) counts Megatron's data parallelism
instead of FSDP2's parameters, gradients, optimizer, compute copies and accumulated gradients: bf16 weights and
fp32 main gradients whole on every rank, fp32 master weights and Adam's moments sharded over dp (zero1, the
distributed optimizer) or whole (ddp); the activations are flm's.

Bytes that autograd saves per token in one block (eager, no compile), counted from the ops of flm.model
(checked against a measured CPU run in tests/scaling/test_memory.py): the LayerNorm inputs (fp32, autocast
runs LayerNorm in fp32) and outputs (compute dtype, the projections' input), q and k before rotary (fp32:
``_rotate`` upcasts), v, rotated q and k, the attention output and its reshaped copy (compute dtype), the
FFN pre-activation and GeLU output (compute dtype); plus fp32 LayerNorm statistics and the attention's
log-sum-exp. Everything else (CUDA context, NCCL buffers, allocator fragmentation) is left to ``HEADROOM``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from flm.config import SELECTIVE_EVERY, ModelConfig, RunConfig
from flm.distributed.mesh import ParallelDims, check_layout
from flm.distributed.pipeline import VIRTUAL_STAGES, num_stages, stage_ids, stage_layers
from flm.errors import FlmError
from flm.hardware import load_catalog
from flm.scaling.cost import stage_gpus
from flm.stages import Stage, resolve_stages

GIB = 1024**3
DpMode = Literal["fsdp", "zero1", "ddp"]  # as cost.dp_mode: flm's FSDP2, or Megatron's (distributed) optimizer
HEADROOM = 0.10  # of the device kept free for the CUDA context, NCCL buffers and allocator fragmentation
FP32, BF16 = 4, 2
# Bytes saved per token per block: (LayerNorm input, LayerNorm output, per attention dim, per FFN unit).
ACT_BYTES = {FP32: (4, 4, 28, 8), BF16: (4, 2, 18, 4)}
LOSS_CHUNK_ELEMS = {"cpu": 2**21, "cuda": 2**27}  # fp32 logits per chunk of flm.loss.linear_cross_entropy


# ----- parameters per rank ---------------------------------------------------------------------------------
def _block_tensors(m: ModelConfig, tp: int) -> list[tuple[int, int]]:
    """(dim 0, other dims) of each parameter of one block as a tensor-parallel rank holds it."""
    d, a, f = m.d_model, m.attn_dim // tp, int(m.d_ff or 0) // tp
    norms = [(d, 1)] * 4  # ln1, ln2 weight and bias: replicated
    qkv = [(a, d), (a, 1)] * 3  # column-wise weight and bias
    return norms + qkv + [(d, a), (d, 1), (f, d), (f, 1), (d, f), (d, 1)]  # o, o bias, up, up bias, down, bias


def _chunk(rows: int, parts: int, index: int) -> int:
    """Rows ``torch.chunk`` (FSDP2's sharding) gives part ``index`` of ``parts``."""
    size = -(-rows // parts)
    return max(0, min(size, rows - index * size))


@dataclass(frozen=True)
class RankTensors:
    """The parameter tensors a rank holds: (dim 0, other dims) after tensor parallelism, before FSDP2."""

    tensors: list[tuple[int, int]]
    blocks: list[int]  # global indices of its blocks
    first: bool  # holds the embedding (stage 0)
    last: bool  # holds the final LayerNorm, the readout copy of the embedding and the loss

    def numel(self, dp: int = 1, dp_rank: int = 0) -> int:
        return sum(_chunk(rows, dp, dp_rank) * rest for rows, rest in self.tensors)


def rank_tensors(m: ModelConfig, dims: ParallelDims, pp_rank: int = 0) -> RankTensors:
    """What pipeline rank ``pp_rank`` holds of model ``m`` under ``dims``."""
    n = num_stages(dims.pp, dims.pp_schedule) if dims.pp > 1 else 1
    layers = stage_layers(m.n_layers, n)
    stages = stage_ids(pp_rank, dims.pp, dims.pp_schedule) if dims.pp > 1 else [0]
    emb = (m.padded_vocab_size // dims.tp, m.d_model)
    tensors: list[tuple[int, int]] = []
    blocks: list[int] = []
    for s in stages:
        if s == 0:
            tensors.append(emb)
        for i in layers[s]:
            blocks.append(i)
            tensors += _block_tensors(m, dims.tp)
        if s == n - 1:
            tensors += [(m.d_model, 1), (m.d_model, 1)] + ([emb] if n > 1 else [])
    return RankTensors(tensors, blocks, first=0 in stages, last=n - 1 in stages)


# ----- activations -----------------------------------------------------------------------------------------
def block_activation_bytes(m: ModelConfig, tokens: int, tp: int, sp: bool, elem: int) -> int:
    """Bytes autograd keeps for one block's backward over ``tokens`` tokens (see the module docstring)."""
    ln_in, ln_out, per_a, per_f = ACT_BYTES[elem]
    d, a, f, heads = m.d_model, m.attn_dim // tp, int(m.d_ff or 0) // tp, m.n_heads // tp
    seq_shard = tp if sp else 1  # sequence parallel shards the LayerNorms; the projections see whole rows
    per_token = 2 * ln_in * d // seq_shard + 2 * ln_out * d + per_a * a + per_f * f
    per_token += 4 * 4 // seq_shard + 4 * heads  # LayerNorm mean and rstd, attention log-sum-exp (fp32)
    if m.dropout > 0:
        per_token += 3 * d // seq_shard  # a byte mask per dropout (attention out, MLP out, embedding)
    return tokens * per_token


def microbatch_activation_bytes(m: ModelConfig, held: RankTensors, tokens: int, dims: ParallelDims, ac: str,
                                elem: int, device: str = "cuda") -> int:
    """Bytes a rank keeps for one micro-batch of ``tokens`` tokens at its peak: the blocks' saved tensors
    (a recomputing block keeps only its input), plus the larger of what the last stage's loss holds at the
    end of the forward and one block's activations while it is recomputed in the backward (the loss's
    saved gradients are consumed before any block's backward starts)."""
    sp = dims.sequence_parallel and dims.tp > 1
    full = block_activation_bytes(m, tokens, dims.tp, sp, elem)
    ckpt = [ac == "full" or (ac == "selective" and i % SELECTIVE_EVERY == SELECTIVE_EVERY - 1) for i in held.blocks]
    kept = sum(ckpt) * tokens * elem * m.d_model // (dims.tp if sp else 1) + (len(ckpt) - sum(ckpt)) * full
    kept += 2 * 4 * m.max_seq_len * int(m.head_dim or 0)  # the fp32 rotary tables (q and k), shared
    if held.first:
        kept += 8 * tokens  # token ids, for the embedding's backward
    loss = 0
    if held.last:
        vocab = m.padded_vocab_size // dims.tp
        # ln_f's input and the readout's gradients (dh fp32; dw in the parameter dtype, computed in the
        # forward), and one chunk's fp32 logits and softmax
        loss = tokens * (4 * m.d_model + 16) + vocab * m.d_model * elem
        loss += 2 * 4 * min(tokens * vocab, LOSS_CHUNK_ELEMS.get(device, LOSS_CHUNK_ELEMS["cuda"]))
    return kept + max(loss, full if any(ckpt) else 0)


def in_flight(dims: ParallelDims, microbatches: int) -> float:
    """Micro-batches whose activations the first pipeline rank holds at once (1 without a pipeline)."""
    if dims.pp == 1:
        return 1.0
    if dims.pp_schedule == "gpipe":
        return float(microbatches)
    held = float(min(microbatches, dims.pp))
    if dims.pp_schedule == "interleaved_1f1b":
        v = VIRTUAL_STAGES[dims.pp_schedule]
        held = min(float(microbatches), held * (1 + (dims.pp - 1) / (dims.pp * v)))
    return held


# ----- one stage -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageMemory:
    """Bytes per device of one stage, on its fullest rank (``pp_rank``, data-parallel rank 0)."""

    name: str
    layout: str  # "tp·pp·dp"
    n_gpus: int
    dtype: str  # "bf16" or "fp32"
    microbatch: int  # sequences per micro-batch per data-parallel rank
    microbatches: int  # micro-batches per step per data-parallel rank
    in_flight: float  # micro-batches whose activations are held at once
    activation_checkpointing: str
    pp_rank: int
    params: int
    grads: int
    optimizer: int
    compute_copies: int
    accumulated_grads: int
    activations: int
    growth_full: int | None  # old + new model and moments as full tensors (growth in memory, today)
    growth_sharded: int | None  # old + new shards of model and moments (growth in sharded form)

    @property
    def total(self) -> int:
        return (self.params + self.grads + self.optimizer + self.compute_copies + self.accumulated_grads
                + self.activations)


def _megatron_state(held: RankTensors, dp: int, elem: int, dp_mode: DpMode) -> dict[str, int | float]:
    """Megatron's data parallelism (Megatron-LM docs, "distributed optimizer"): the model's weights in the
    compute dtype and a contiguous fp32 buffer of main gradients (accumulated in place over the micro-batches)
    are whole on every data-parallel rank; the fp32 master weights and Adam's two moments are the rank's
    1 / dp of a flat buffer under ZeRO-1 (``zero1``), whole under plain DDP. Nothing is gathered per step."""
    unsharded = held.numel()
    shard = -(-unsharded // dp) if dp_mode == "zero1" else unsharded
    master = 0 if elem == FP32 else FP32 * shard  # fp32 training updates the weights themselves
    return {"params": elem * unsharded, "grads": FP32 * unsharded, "optimizer": 2 * FP32 * shard + master,
            "compute_copies": 0, "accumulated_grads": 0}


def _rank_memory(m: ModelConfig, dims: ParallelDims, pp_rank: int, micro: int, n_micro: int, seq_len: int,
                 ac: str, elem: int, device: str, dp_mode: DpMode = "fsdp") -> dict[str, int | float]:
    held = rank_tensors(m, dims, pp_rank)
    if dp_mode != "fsdp":
        out = _megatron_state(held, dims.dp, elem, dp_mode)
    else:
        out = _fsdp_state(m, dims, held, n_micro, elem)
    flight = in_flight(dims, n_micro)
    per_micro = microbatch_activation_bytes(m, held, micro * seq_len, dims, ac, elem, device)
    out["activations"] = int(per_micro * flight)
    out["in_flight"] = flight
    return out


def _fsdp_state(m: ModelConfig, dims: ParallelDims, held: RankTensors, n_micro: int,
                elem: int) -> dict[str, int | float]:
    """flm's FSDP2 (the module docstring): fp32 shards of weights, gradients and moments, what it gathers
    to compute, and the unsharded gradients it accumulates over several micro-batches."""
    local = held.numel(dims.dp, 0)
    unsharded = held.numel()
    out: dict[str, int | float] = {
        "params": FP32 * local, "grads": FP32 * local,
        "optimizer": 2 * FP32 * local + FP32 * len(held.tensors),
    }
    if dims.dp > 1 and dims.pp > 1:
        copies = elem * unsharded  # the whole local stage stays gathered through the schedule
    elif dims.dp > 1:  # the root (embedding) for the step, two blocks at a time, one block's unsharded grads
        block = sum(r * c for r, c in _block_tensors(m, dims.tp)) if held.blocks else 0
        root = unsharded - len(held.blocks) * block
        copies = elem * (root + 2 * block) + FP32 * block
    else:
        copies = elem * unsharded if elem != FP32 else 0  # autocast's bf16 weight copies
    out["compute_copies"] = copies
    accumulate = dims.dp > 1 and n_micro > 1
    out["accumulated_grads"] = FP32 * unsharded if accumulate else 0
    return out


def stage_memory(cfg: RunConfig, stage: Stage, prev: Stage | None = None) -> StageMemory:
    """Bytes per device of ``stage`` under its own layout (checked as the run preflight checks it)."""
    n_gpus, _, _, _ = stage_gpus(cfg, stage)
    tc, m = stage.cfg.train, stage.model
    key = "model" if stage.growth is None else f"{stage.where} (grown) model"
    dims = check_layout(stage.parallel, n_gpus, m, stage.cfg.seq_len, stage.parallel_where, key, tc.batch_size)
    per_dp = tc.batch_size // dims.dp
    if dims.pp > 1:
        micro, n_micro = per_dp // dims.microbatches, dims.microbatches
    else:
        micro = tc.micro_batch_size or per_dp
        n_micro = per_dp // micro
    bf16 = tc.dtype == "bf16" or (tc.dtype == "auto" and tc.device != "cpu")
    elem = BF16 if bf16 else FP32
    device = "cpu" if tc.device == "cpu" else "cuda"
    ranks = [_rank_memory(m, dims, r, micro, n_micro, stage.cfg.seq_len, tc.activation_checkpointing, elem, device)
             for r in range(dims.pp)]
    worst = max(range(dims.pp), key=lambda r: sum(v for k, v in ranks[r].items() if k != "in_flight"))
    r = ranks[worst]
    growth_full = growth_sharded = None
    if prev is not None:
        state = 3 * FP32  # weights and two moments
        growth_full = state * (prev.model.num_params() + m.num_params())
        prev_dims = ParallelDims.from_config(prev.parallel, stage_gpus(cfg, prev)[0], prev.parallel_where)
        old = max(rank_tensors(prev.model, prev_dims, p).numel(prev_dims.dp) for p in range(prev_dims.pp))
        new = max(rank_tensors(m, dims, p).numel(dims.dp) for p in range(dims.pp))
        growth_sharded = state * (old + new)
    return StageMemory(
        name=stage.name, layout=f"{dims.tp}·{dims.pp}·{dims.dp}", n_gpus=n_gpus, dtype="bf16" if bf16 else "fp32",
        microbatch=micro, microbatches=n_micro, in_flight=float(r["in_flight"]),
        activation_checkpointing=tc.activation_checkpointing, pp_rank=worst,
        params=int(r["params"]), grads=int(r["grads"]), optimizer=int(r["optimizer"]),
        compute_copies=int(r["compute_copies"]), accumulated_grads=int(r["accumulated_grads"]),
        activations=int(r["activations"]), growth_full=growth_full, growth_sharded=growth_sharded,
    )


# ----- the plan --------------------------------------------------------------------------------------------
def device_gib(name: str) -> float:
    """Memory of a named device ('A800', 'NVIDIA H100 80GB HBM3', 'h200'; the marketed "80 GB" is 80 GiB) from
    flm/hardware.toml, by the catalog's one resolver, or one clear error."""
    catalog = load_catalog()
    gpu = catalog.find(name)
    if gpu is None:
        raise FlmError(f"device {name!r} has no known memory size: pass --device-gb (GiB per device) or use one "
                       f"of {', '.join(catalog.gpus)}")
    return gpu.hbm_gib


@dataclass(frozen=True)
class PlanMemory:
    device: str
    device_gib: float
    headroom: float
    stages: list[StageMemory] = field(default_factory=list)

    @property
    def usable(self) -> float:
        return self.device_gib * GIB * (1 - self.headroom)

    def fits(self, s: StageMemory) -> bool:
        return s.total <= self.usable

    def to_dict(self) -> dict:
        return {
            "device": self.device, "device_gib": self.device_gib, "headroom": self.headroom,
            "usable_bytes": int(self.usable),
            "stages": [asdict(s) | {"total": s.total, "fits": self.fits(s)} for s in self.stages],
        }


def plan_memory(cfg: RunConfig, device: str | None = None, gib: float | None = None) -> PlanMemory:
    """Every stage's bytes per device, against ``device`` (default cost.gpu) of ``gib`` GiB (default: known)."""
    name = device or cfg.cost.gpu
    if gib is not None and not (gib > 0 and math.isfinite(gib)):
        raise FlmError(f"--device-gb {gib}: give the device memory in GiB, e.g. --device-gb 80")
    size = gib if gib is not None else device_gib(name)
    plan = resolve_stages(cfg)
    stages = [stage_memory(cfg, s, prev) for prev, s in zip([None, *plan], plan)]
    return PlanMemory(device=name, device_gib=size, headroom=HEADROOM, stages=stages)


def layout_peak_bytes(m: ModelConfig, dims: ParallelDims, micro: int, n_micro: int, seq_len: int, ac: str,
                      elem: int = BF16, device: str = "cuda", dp_mode: DpMode = "fsdp") -> int:
    """Bytes per device on the fullest pipeline rank of a layout (what `flm plan layout` checks against the
    device's memory less ``HEADROOM``), for flm's FSDP2 or, by ``dp_mode``, Megatron's distributed optimizer
    (``zero1``) or DDP."""
    return max(int(sum(v for k, v in _rank_memory(m, dims, r, micro, n_micro, seq_len, ac, elem, device,
                                                  dp_mode).items() if k != "in_flight")) for r in range(dims.pp))
