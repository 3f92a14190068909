"""The time of one training step of a layout on a cluster, from the model shape and the hardware's data sheet.

One pipeline rank (the busiest: ceil(layers / pp) blocks, plus the logits and loss on the last stage) runs
``m`` micro-batches of ``microbatch`` sequences each. Per micro-batch it spends:

- compute: each block's GEMMs (forward, and the two backward GEMMs of each) at ``gemm_efficiency`` of the
  peak, its attention core (a flash kernel at ``FLASH_EFFICIENCY``, causal: half the score matrix; or, without
  flash, batched GEMMs plus a softmax over the whole score matrix through HBM), and its memory-bound element-wise
  work (LayerNorms, residual adds, activation, rotary; counted bytes at ``HBM_EFFICIENCY`` of the bandwidth);
- recompute: the forward again for the share of blocks that checkpoint (``recompute``), or only the attention
  core (``attn_recompute``, Korthikanti et al. 2022's selective recompute);
- tensor-parallel communication: two all-reduces per block in the forward and two in the backward (under
  sequence parallelism a reduce-scatter plus an all-gather each: the same bytes), on the intra-node link, or
  on the network when tp spans nodes; not overlapped (Megatron's default);
- pipeline point-to-point sends of the micro-batch's hidden states and their gradients (per virtual stage).

Per step the pipeline adds its bubble, (pp - 1) / v micro-batch times (GPipe and 1F1B: v = 1; interleaved
1F1B: v virtual stages per rank; Narayanan et al. 2021, Section 2.2), the data-parallel communication
(reduce-scatter of fp32 gradients and all-gather of bf16 parameters for ZeRO-1 / Megatron's distributed
optimizer, an all-reduce for plain DDP, and per micro-batch all-gathers for FSDP without a pipeline),
of which ``DP_OVERLAP`` hides behind compute, and AdamW's memory-bound update of the local shard.

The constants below are global: the same for every model, layout, GPU and published run (docs/performance.md
says where each comes from). Nothing here is fitted per model or per paper.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from flm.errors import FlmError
from flm.hardware import Gpu, Network
from flm.scaling.perf import comm


@dataclass(frozen=True)
class Constants:
    """The model's efficiency constants (docs/performance.md gives the reasoning for each value)."""

    gemm_peak_fraction: float = 0.80  # of the datasheet peak a large bf16 GEMM reaches (cuBLAS, A100 and H100)
    gemm_half_dim: float = 64.0  # a GEMM dimension of this size runs at half speed (tile and wave fill)
    flash_efficiency: float = 0.50  # FlashAttention-2 forward + backward, share of the peak
    hbm_efficiency: float = 0.80  # of the datasheet HBM bandwidth element-wise kernels achieve
    link_efficiency: float = 0.75  # of the NVLink bandwidth NCCL's ring achieves (nccl-tests bus bandwidth)
    network_efficiency: float = 0.80  # of the per-GPU network bandwidth NCCL achieves across nodes
    link_latency_us: float = 3.0  # one ring step inside a node
    dp_overlap: float = 0.5  # share of data-parallel communication that can hide behind compute


CONSTANTS = Constants()
BF16, FP32 = 2, 4
GRAD_BYTES = FP32  # gradients are reduced in fp32 (Megatron with bf16; FSDP2's reduce_dtype in flm)
ADAM_BYTES_PER_PARAM = 30  # fp32 master, m, v read + written (24), the fp32 gradient read (4), bf16 copy (2)
ELEMENTWISE_D = 14  # bf16 reads + writes of d-wide rows per token per block forward: 2 LN (2 each), 2 residual
# adds (3 each), 2 bias-dropout-adds (2 each)
SOFTMAX_BYTES = 9  # per score element, forward, without flash: scale-mask-softmax (2 + 2), dropout (2 + 2 + 1)
ROTARY_BYTES = {"none": 0, "fused": 8, "eager": 64}  # per q/k element, forward (backward: twice): fused reads and
# writes bf16 once; eager upcasts to fp32, then cos and sin products, rotate_half, the xPos scale, the sum, the cast
LOSS_BYTES = 16  # per logit, forward + backward: fp32 read for max, exp-sum, gradient write and read
Schedule = Literal["gpipe", "1f1b", "interleaved"]
DpMode = Literal["zero1", "ddp", "fsdp"]


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer: what the step time depends on."""

    d_model: int
    n_layers: int
    n_heads: int
    head_dim: int
    d_ff: int
    vocab: int
    seq_len: int
    kv_heads: int | None = None  # grouped-query attention; None = n_heads
    gated: bool = False  # SwiGLU / GeGLU: three FFN matrices
    rotary: Literal["none", "fused", "eager"] = "fused"  # eager: rotary (or xPos) as PyTorch element-wise ops

    @property
    def attn_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return (self.kv_heads or self.n_heads) * self.head_dim

    def block_matmul_params(self) -> int:
        d, a, kv, f = self.d_model, self.attn_dim, self.kv_dim, self.d_ff
        return d * (a + 2 * kv) + a * d + (3 if self.gated else 2) * d * f

    def params(self) -> int:
        """Matmul weights of the blocks plus one (tied) embedding; biases and norms left out."""
        return self.n_layers * self.block_matmul_params() + self.vocab * self.d_model

    def block_forward_flops(self) -> float:
        """Forward FLOPs of all blocks per token: matmuls plus attention over the whole context (the
        Narayanan et al. 2021 count; causal kernels do half the attention but are credited the whole)."""
        return self.n_layers * (2.0 * self.block_matmul_params() + 4.0 * self.seq_len * self.attn_dim)

    def model_flops_per_token(self) -> float:
        return 3.0 * (self.block_forward_flops() + 2.0 * self.d_model * self.vocab)


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    microbatch: int = 1  # sequences per micro-batch
    schedule: Schedule = "1f1b"
    virtual: int = 2  # virtual stages per rank, interleaved only
    sequence_parallel: bool = False
    recompute: float = 0.0  # share of blocks that recompute their forward
    attn_recompute: bool = False  # recompute only the attention core (Korthikanti et al. 2022, "selective")
    dp_mode: DpMode = "zero1"
    flash: bool = True

    @property
    def n_gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def v(self) -> int:
        return self.virtual if self.schedule == "interleaved" and self.pp > 1 else 1

    def tag(self) -> str:
        sched = {"gpipe": "gpipe", "1f1b": "1F1B", "interleaved": f"interleaved v={self.virtual}"}[self.schedule]
        rc = {0.0: "none", 1.0: "full"}.get(self.recompute, f"{self.recompute:.0%}")
        return (f"{self.tp}·{self.pp}·{self.dp} mb {self.microbatch} {sched if self.pp > 1 else ''}"
                f"{' SP' if self.sequence_parallel and self.tp > 1 else ''} rc {rc}").replace("  ", " ")


@dataclass(frozen=True)
class Breakdown:
    """Seconds per step by cause, and what they give."""

    compute: float
    recompute: float
    tp_comm: float
    pp_comm: float
    bubble: float
    dp_comm: float
    optimizer: float
    microbatches: int
    model_flops: float  # per step, all GPUs
    hardware_flops: float  # model FLOPs plus recomputed forwards
    n_gpus: int
    peak_tflops: float
    dp_comm_total: float = 0.0  # before overlap
    parts: tuple[str, ...] = field(default=("compute", "recompute", "tp_comm", "pp_comm", "bubble", "dp_comm",
                                            "optimizer"), repr=False)

    @property
    def step(self) -> float:
        return sum(getattr(self, p) for p in self.parts)

    @property
    def tflops_per_gpu(self) -> float:
        """Hardware TFLOP/s per GPU (Megatron's count, FLM-101B's Table 2)."""
        return self.hardware_flops / (self.step * self.n_gpus) / 1e12

    @property
    def model_tflops_per_gpu(self) -> float:
        return self.model_flops / (self.step * self.n_gpus) / 1e12

    @property
    def mfu(self) -> float:
        return self.model_tflops_per_gpu / self.peak_tflops

    @property
    def hfu(self) -> float:
        return self.tflops_per_gpu / self.peak_tflops

    def shares(self) -> dict[str, float]:
        return {p: getattr(self, p) / self.step for p in self.parts}

    def binding(self) -> str:
        """The largest cost besides the compute itself, in words."""
        over = {p: getattr(self, p) for p in self.parts if p not in ("compute",)}
        worst = max(over, key=lambda p: over[p])
        names = {"recompute": "recompute", "tp_comm": "communication (TP)", "pp_comm": "communication (PP)",
                 "bubble": "pipeline bubble", "dp_comm": "communication (DP)", "optimizer": "optimizer step"}
        return f"{names[worst]} {over[worst] / self.step:.0%}"

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "parts"}
        return d | {"step": self.step, "tflops_per_gpu": self.tflops_per_gpu,
                    "model_tflops_per_gpu": self.model_tflops_per_gpu, "mfu": self.mfu, "hfu": self.hfu,
                    "shares": self.shares(), "binding": self.binding()}


# ----- kernels -------------------------------------------------------------------------------------------------
def gemm_efficiency(m: float, n: float, k: float, c: Constants = CONSTANTS) -> float:
    """Share of the peak an (m x k) @ (k x n) bf16 GEMM reaches: ``gemm_peak_fraction`` for large GEMMs, less
    when a dimension is small (x / (x + gemm_half_dim) per dimension: partly filled tiles and waves)."""
    h = c.gemm_half_dim
    return c.gemm_peak_fraction * (m / (m + h)) * (n / (n + h)) * (k / (k + h))


def gemm_time(m: float, n: float, k: float, gpu: Gpu, c: Constants = CONSTANTS) -> float:
    """The slower of the FLOPs at the shape's efficiency and the bytes of A, B and C through HBM."""
    flops = 2.0 * m * n * k
    compute = flops / (gemm_efficiency(m, n, k, c) * gpu.peak_tflops * 1e12)
    memory = BF16 * (m * k + k * n + m * n) / (gpu.hbm_gbps * 1e9 * c.hbm_efficiency)
    return max(compute, memory)


def _fwd_bwd_gemms(m: float, n: float, k: float, gpu: Gpu, c: Constants) -> tuple[float, float]:
    """Forward (m x k @ k x n), backward: the input gradient (m x n @ n x k) and the weight gradient (k x m @ m x n)."""
    return gemm_time(m, n, k, gpu, c), gemm_time(m, k, n, gpu, c) + gemm_time(k, n, m, gpu, c)


def _memory_time(nbytes: float, gpu: Gpu, c: Constants) -> float:
    return nbytes / (gpu.hbm_gbps * 1e9 * c.hbm_efficiency)


@dataclass(frozen=True)
class _Block:
    """Seconds one block takes per micro-batch on one GPU."""

    fwd: float  # GEMMs + attention + element-wise, forward
    bwd: float
    attn_fwd: float  # the attention core's forward (what selective recompute repeats)
    tp_fwd: float  # tensor-parallel communication of one forward (the backward has as much)


def _block(s: Shape, lay: Layout, gpu: Gpu, tp_bw: float, tp_lat: float, c: Constants) -> _Block:
    tp, T = lay.tp, lay.microbatch * s.seq_len
    d, a, kv, f = s.d_model, s.attn_dim / tp, s.kv_dim / tp, s.d_ff / tp
    fwd = bwd = 0.0
    for n, k in ((a + 2 * kv, d), (d, a), ((2 if s.gated else 1) * f, d), (d, f)):  # qkv, out, up (+gate), down
        tf, tb = _fwd_bwd_gemms(T, n, k, gpu, c)
        fwd, bwd = fwd + tf, bwd + tb
    heads = s.n_heads / tp
    if lay.flash:  # causal: half the scores; FlashAttention-2's backward does 2.5x the forward's matmuls
        attn_f = 0.5 * 4.0 * T * s.seq_len * a / (c.flash_efficiency * gpu.peak_tflops * 1e12)
        attn_b = 2.5 * attn_f
    else:  # batched GEMMs over the whole score matrix, softmax (and dropout) through HBM
        batch = lay.microbatch * heads
        qk_f, qk_b = _fwd_bwd_gemms(s.seq_len, s.seq_len, s.head_dim, gpu, c)
        av_f, av_b = _fwd_bwd_gemms(s.seq_len, s.head_dim, s.seq_len, gpu, c)
        soft = _memory_time(SOFTMAX_BYTES * batch * s.seq_len**2, gpu, c)
        attn_f, attn_b = batch * (qk_f + av_f) + soft, batch * (qk_b + av_b) + 2 * soft
    sp = tp if lay.sequence_parallel else 1
    elem = BF16 * T * (ELEMENTWISE_D * d / sp + (3 if s.gated else 2) * f)
    elem_f = _memory_time(elem + ROTARY_BYTES[s.rotary] * T * (a + kv), gpu, c)
    tp_fwd = 2 * comm.all_reduce(BF16 * T * d, tp, tp_bw, tp_lat)
    return _Block(fwd=fwd + attn_f + elem_f, bwd=bwd + attn_b + 2 * elem_f, attn_fwd=attn_f, tp_fwd=tp_fwd)


def _links(lay: Layout, gpu: Gpu, net: Network, c: Constants) -> dict[str, tuple[float, float]]:
    """(bytes/s, latency) of the TP, PP and DP groups. Ranks are placed TP innermost, then DP, then PP
    (Megatron's order): a group stays in a node while its span fits the node. A group that spans nodes with
    ``k`` of its ranks in each node runs NCCL's ring through those k ranks over NVLink and crosses to the next
    node once per ring channel, one channel per NIC: the node's NICs are shared by the 8 / k groups that run at
    once, so each group gets the network bandwidth of k GPUs (nccl-tests' bus bandwidth across nodes is the
    node's NIC total when all 8 GPUs are in the group), and never more than NVLink's."""
    node = (gpu.link_gbps * 1e9 * c.link_efficiency, c.link_latency_us * 1e-6)
    per = gpu.gpus_per_node

    def wire(inner: int, size: int) -> tuple[float, float]:
        """The network for a group of ``size`` ranks placed every ``inner`` GPUs (its stride)."""
        k = max(1, min(size, per // inner)) if inner < per else 1
        return min(k * net.gbps_per_gpu * 1e9 * c.network_efficiency, node[0]), net.latency_us * 1e-6

    return {"tp": node if lay.tp <= per else wire(1, lay.tp),
            "dp": node if lay.tp * lay.dp <= per else wire(lay.tp, lay.dp),
            "pp": node if lay.tp * lay.dp * lay.pp <= per else wire(lay.tp * lay.dp, lay.pp)}


def check_layout(s: Shape, lay: Layout, batch: int) -> int:
    """Micro-batches per step, or one error saying what does not divide."""
    if min(lay.tp, lay.pp, lay.dp, lay.microbatch) < 1:
        raise FlmError(f"layout {lay.tp}·{lay.pp}·{lay.dp}, micro-batch {lay.microbatch}: degrees must be >= 1")
    for name, size in (("n_heads", s.n_heads), ("d_ff", s.d_ff)):
        if size % lay.tp:
            raise FlmError(f"tp = {lay.tp} does not divide {name} = {size}; pick a divisor of {size}")
    if lay.pp * lay.v > s.n_layers:
        raise FlmError(f"pp = {lay.pp} (x {lay.v} virtual) exceeds the {s.n_layers} layers")
    if batch % (lay.dp * lay.microbatch):
        raise FlmError(f"the batch of {batch} sequences does not split into dp = {lay.dp} ranks of micro-batches "
                       f"of {lay.microbatch}; make it a multiple of {lay.dp * lay.microbatch}")
    return batch // (lay.dp * lay.microbatch)


def step_time(s: Shape, lay: Layout, batch: int, gpu: Gpu, net: Network, c: Constants = CONSTANTS) -> Breakdown:
    """Seconds per training step of ``batch`` sequences, by cause (the module docstring has the model)."""
    m = check_layout(s, lay, batch)
    links = _links(lay, gpu, net, c)
    blk = _block(s, lay, gpu, *links["tp"], c)
    T = lay.microbatch * s.seq_len
    layers = math.ceil(s.n_layers / lay.pp)  # the busiest rank
    vocab = s.vocab / lay.tp
    lf, lb = _fwd_bwd_gemms(T, vocab, s.d_model, gpu, c)
    loss = lf + lb + _memory_time(LOSS_BYTES * T * vocab, gpu, c)
    compute = layers * (blk.fwd + blk.bwd) + loss
    rc_blocks = layers * lay.recompute
    recompute = rc_blocks * blk.fwd + (layers - rc_blocks) * (blk.attn_fwd if lay.attn_recompute else 0.0)
    tp = layers * (2 + lay.recompute) * blk.tp_fwd
    pp = 0.0
    if lay.pp > 1:  # hidden states forward and their gradients backward, per virtual stage (scattered over tp)
        size = BF16 * T * s.d_model / lay.tp
        pp = 2 * lay.v * comm.send(size, *links["pp"])
    micro = compute + recompute + tp + pp
    bubble = (lay.pp - 1) / lay.v * micro
    # data parallelism over the busiest rank's parameters
    local = (layers * s.block_matmul_params() + s.vocab * s.d_model) / lay.tp
    bw, lat = links["dp"]
    if lay.dp_mode == "ddp":
        dp_total, window = comm.all_reduce(GRAD_BYTES * local, lay.dp, bw, lat), layers * blk.bwd
    elif lay.dp_mode == "zero1":
        dp_total = comm.reduce_scatter(GRAD_BYTES * local, lay.dp, bw, lat) + comm.all_gather(
            BF16 * local, lay.dp, bw, lat)
        window = layers * blk.bwd
    else:  # fsdp: gradients reduce-scattered once; parameters gathered for each micro-batch's forward and
        # backward unless a pipeline keeps its stage gathered (as flm does), prefetched behind the compute
        gathers = 1 if lay.pp > 1 else 2 * m
        dp_total = comm.reduce_scatter(GRAD_BYTES * local, lay.dp, bw, lat) + gathers * comm.all_gather(
            BF16 * local, lay.dp, bw, lat)
        window = m * (compute + recompute)
    dp = max(dp_total * (1 - c.dp_overlap), dp_total - window) if lay.dp > 1 else 0.0
    shard = lay.dp if lay.dp_mode in ("zero1", "fsdp") else 1
    optimizer = _memory_time(ADAM_BYTES_PER_PARAM * local / shard, gpu, c)
    tokens = batch * s.seq_len
    model = tokens * s.model_flops_per_token()
    extra = lay.recompute * s.block_forward_flops() + (
        (1 - lay.recompute) * 4.0 * s.n_layers * s.seq_len * s.attn_dim if lay.attn_recompute else 0.0)
    return Breakdown(
        compute=m * compute, recompute=m * recompute, tp_comm=m * tp, pp_comm=m * pp, bubble=bubble,
        dp_comm=dp, optimizer=optimizer, microbatches=m, model_flops=model, hardware_flops=model + tokens * extra,
        n_gpus=lay.n_gpus, peak_tflops=gpu.peak_tflops, dp_comm_total=dp_total,
    )


def bubble_fraction(lay: Layout, microbatches: int) -> float:
    """Idle share of the pipeline relative to the ideal time: (p - 1) / (v · m) (Narayanan et al. 2021)."""
    return (lay.pp - 1) / (lay.v * microbatches)


def with_constants(**changes: float) -> Constants:
    return replace(CONSTANTS, **changes)
