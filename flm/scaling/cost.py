"""What a growth plan costs: FLOPs, time, GPU-hours, dollars, energy and CO2, the FLM-101B way.

FLOPs per token follow Narayanan et al. 2021 (Megatron-LM, SC21, eq. 3), which the paper uses. For one
token of a block with width d, attention width a, FFN width f and context s, the forward pass costs
``8·d·a + 4·d·f`` FLOPs in matmuls plus ``4·s·a`` in attention scores and values; the logits cost
``2·d·V``. Training is three forwards' worth (forward + backward); recomputing a block's activations
adds one more forward of that block. With a = d and f = 4d this is the paper's
``72·l·h²·(1 + s/6h + V/12lh)`` per token without recompute and ``96·l·h²·(1 + s/6h + V/16lh)`` with it.
The alternative ``6n`` formula is 6N + 12·l·s·a (Chowdhery et al. 2022, Appendix B).

Two FLOP counts run side by side:
- model FLOPs (no recompute): the work the model needs; MFU, zettaFLOPs and the trainer use these;
- hardware FLOPs (with the recompute the plan configures): what the GPUs execute. Measured TFLOP/s per
  GPU (Megatron's count, the paper's Table 2 "utilization") are hardware FLOP/s, so a stage's time is
  ``tokens · hardware FLOPs per token / (GPUs · TFLOP/s)``. A stage that gives an MFU instead takes
  ``tokens · model FLOPs per token / (GPUs · MFU · peak)``.

Energy is GPU-hours × TDP × PUE and CO2 is energy × grid intensity, as in the paper's Table 3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

from flm.config import CostConfig, ModelConfig, RunConfig
from flm.errors import FlmError

Formula = Literal["narayanan", "6n"]
SECONDS_PER_DAY = 86400.0
DEFAULT_MFU = 0.4  # assumed when a stage has neither tflops_per_gpu nor cost.mfu; the output says so


@dataclass(frozen=True)
class GpuSpec:
    peak_tflops: float  # dense bf16 tensor-core peak per GPU
    tdp_watts: float | None


# Dense (no sparsity) bf16 peaks and board TDPs from the vendor data sheets. SXM parts unless named.
KNOWN_GPUS: dict[str, GpuSpec] = {
    "A100-PCIE": GpuSpec(312.0, 300.0),
    "A100": GpuSpec(312.0, 400.0),
    "A800": GpuSpec(312.0, 400.0),  # the paper's cluster; it takes 312 TFLOP/s as the peak
    "H100-PCIE": GpuSpec(756.0, 350.0),
    "H100-NVL": GpuSpec(835.0, 400.0),
    "H100": GpuSpec(989.0, 700.0),
    "H800-PCIE": GpuSpec(756.0, 350.0),
    "H800": GpuSpec(989.0, 700.0),
    "H200": GpuSpec(989.0, 700.0),
}


def lookup_gpu(name: str) -> GpuSpec | None:
    """Known spec for names like 'a100', 'NVIDIA A100-SXM4-80GB', 'H100 PCIe'; None if unknown."""
    key = name.upper().replace("NVIDIA", "").replace(" ", "-").replace("_", "-").strip("-")
    for known, spec in KNOWN_GPUS.items():  # the PCIe entries come first: more specific
        base, _, variant = known.partition("-")
        if (key == base or key.startswith(base + "-")) and (not variant or variant in key.split("-")):
            return spec
    return None


# ----------------------------------------------------------------------------------------------- FLOPs


def _block_forward_flops(m: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs of all transformer blocks, per token (matmuls + attention over the context)."""
    d, a, f = m.d_model, m.attn_dim, m.d_ff
    assert f is not None
    per_layer = 2 * (4 * d * a + 2 * d * f) + 4 * seq_len * a
    return float(m.n_layers * per_layer)


def _check_recompute(recompute: bool | float) -> float:
    r = float(recompute)
    if not 0.0 <= r <= 1.0:
        raise FlmError(f"recompute fraction {r} is outside 0..1: give the share of blocks recomputed")
    return r


def flops_per_token(
    model_cfg: ModelConfig, seq_len: int, recompute: bool | float = False, formula: Formula = "narayanan"
) -> float:
    """Training FLOPs (forward + backward) per token.

    ``recompute``: False = model FLOPs; True = every block recomputes its activations (one more forward);
    a float = that share of the blocks does (Megatron's --recompute-num-layers / n_layers).
    """
    r = _check_recompute(recompute)
    blocks = _block_forward_flops(model_cfg, seq_len)
    if formula == "narayanan":
        logits = 2.0 * model_cfg.d_model * model_cfg.padded_vocab_size
        return (3.0 + r) * blocks + 3.0 * logits
    if formula == "6n":
        attn = 4.0 * model_cfg.n_layers * seq_len * model_cfg.attn_dim
        block_params = model_cfg.num_params(embeddings=False)
        return 6.0 * model_cfg.num_params() + 3.0 * attn + r * (2.0 * block_params + attn)
    raise FlmError(f"unknown FLOPs formula {formula!r}: use 'narayanan' or '6n'")


# ------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class StagePlan:
    """One stage as `flm cost` sees it: shape, tokens, GPUs and throughput."""

    name: str
    model: ModelConfig
    tokens: int
    n_gpus: int
    tp: int
    pp: int
    dp: int
    tflops_per_gpu: float | None  # measured hardware TFLOP/s per GPU
    mfu: float | None  # used when tflops_per_gpu is None
    recompute: float  # share of blocks that recompute activations


def _stage_gpus(cfg: RunConfig, i: int, where: str) -> tuple[int, int, int, int]:
    st = cfg.stages[i] if cfg.stages else None
    par = (st.parallel if st and st.parallel else None) or cfg.parallel
    tp, pp = par.tp, par.pp
    if par.dp > 0:
        n = par.dp * tp * pp
        if "n_gpus" in cfg.cost.model_fields_set and n != cfg.cost.n_gpus:
            raise FlmError(
                f"{where}: parallel tp·pp·dp = {tp}·{pp}·{par.dp} = {n} GPUs but cost.n_gpus = "
                f"{cfg.cost.n_gpus}; make them agree or drop cost.n_gpus"
            )
        return n, tp, pp, par.dp
    n = cfg.cost.n_gpus
    if n % (tp * pp):
        raise FlmError(
            f"{where}: cost.n_gpus = {n} is not a multiple of tp·pp = {tp * pp}; set parallel.dp or change "
            "cost.n_gpus"
        )
    return n, tp, pp, n // (tp * pp)


def stage_plans(cfg: RunConfig) -> list[StagePlan]:
    """Every stage of the run (one when the config lists no stages), with tokens and GPU counts."""
    models = cfg.stage_models()
    seq = cfg.seq_len
    n_stages = len(models)
    layers = cfg.cost.recompute_layers
    if layers is not None and len(layers) != n_stages:
        raise FlmError(
            f"cost.recompute_layers has {len(layers)} entries for {n_stages} stage(s); give one per stage"
        )
    plans = []
    for i, m in enumerate(models):
        st = cfg.stages[i] if cfg.stages else None
        where = f"stages[{i}]" if st else "config"
        name = (st.name if st and st.name else None) or (f"stage {i + 1}" if st else cfg.name)
        if st and st.tokens is not None:
            tokens = st.tokens
        else:
            steps = st.steps if st and st.steps is not None else cfg.train.steps
            batch = st.batch_size if st and st.batch_size is not None else cfg.train.batch_size
            tokens = steps * batch * seq
        if tokens <= 0:
            raise FlmError(f"{where} trains on {tokens} tokens: give it steps or tokens > 0")
        if layers is not None:
            if layers[i] > m.n_layers:
                raise FlmError(
                    f"cost.recompute_layers[{i}] = {layers[i]} exceeds the {m.n_layers} blocks of {where}"
                )
            r = layers[i] / m.n_layers
        else:
            r = 1.0 if cfg.cost.recompute else 0.0
        n, tp, pp, dp = _stage_gpus(cfg, i, where)
        plans.append(
            StagePlan(name, m, tokens, n, tp, pp, dp, st.tflops_per_gpu if st else None, cfg.cost.mfu, r)
        )
    if sum(p.tokens for p in plans) <= 0:
        raise FlmError("the plan trains on 0 tokens: give its stages steps or tokens > 0")
    return plans


# -------------------------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class Hardware:
    gpu: str
    peak_tflops: float
    peak_source: Literal["known", "given", "measured"]
    tdp_watts: float | None


def resolve_hardware(cost: CostConfig, measure: Callable[[], float] | None = None) -> Hardware:
    """Peak and TDP of cost.gpu: given > known > measured (gpu = 'cpu'); else one clear error."""
    spec = lookup_gpu(cost.gpu)
    tdp = cost.tdp_watts if cost.tdp_watts is not None else (spec.tdp_watts if spec else None)
    if cost.peak_tflops is not None:
        return Hardware(cost.gpu, cost.peak_tflops, "given", tdp)
    if spec is not None:
        return Hardware(cost.gpu, spec.peak_tflops, "known", tdp)
    if cost.gpu.strip().lower() == "cpu":
        peak = (measure or measure_cpu_peak_tflops)()
        return Hardware("cpu", peak, "measured", tdp)
    raise FlmError(
        f"cost.gpu = {cost.gpu!r} has no known peak: set cost.peak_tflops (dense bf16 TFLOP/s per GPU) "
        f"or --peak-tflops, or use one of {', '.join(KNOWN_GPUS)}, cpu"
    )


def measure_cpu_peak_tflops() -> float:
    """Best fp32 matmul TFLOP/s of this CPU (the roof the trainer's MFU uses on CPU)."""
    from flm.train.metrics import measure_matmul_peak

    return measure_matmul_peak("cpu", seconds=0.3) / 1e12


# --------------------------------------------------------------------------------------------- costing


@dataclass(frozen=True)
class StageCost:
    name: str
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    params: int
    tokens: int
    n_gpus: int
    tp: int
    pp: int
    dp: int
    throughput: Literal["measured", "mfu"]
    tflops_per_gpu: float  # hardware TFLOP/s per GPU, measured or implied by the MFU
    mfu: float  # model FLOPs utilization
    hfu: float  # hardware FLOPs utilization
    recompute: float
    model_flops_per_token: float
    hardware_flops_per_token: float
    model_flops: float
    hardware_flops: float
    full_recompute_flops: float
    seconds: float
    gpu_hours: float
    dollars: float
    energy_kwh: float | None
    co2_kg: float | None

    @property
    def days(self) -> float:
        return self.seconds / SECONDS_PER_DAY


@dataclass(frozen=True)
class Totals:
    tokens: int
    model_flops: float
    hardware_flops: float
    full_recompute_flops: float
    seconds: float
    gpu_hours: float
    dollars: float
    energy_kwh: float | None
    co2_kg: float | None

    @property
    def days(self) -> float:
        return self.seconds / SECONDS_PER_DAY


@dataclass(frozen=True)
class PlanCost:
    hardware: Hardware
    formula: Formula
    seq_len: int
    price_per_gpu_hour: float
    pue: float
    carbon_kg_per_kwh: float
    stages: list[StageCost]
    total: Totals
    scratch: StageCost  # the final shape trained from scratch on all the tokens
    notes: list[str] = field(default_factory=list)

    @property
    def time_saved(self) -> float:
        """Share of the from-scratch time the growth plan saves."""
        return 1.0 - self.total.seconds / self.scratch.seconds

    @property
    def speedup(self) -> float:
        return self.scratch.seconds / self.total.seconds

    def to_dict(self) -> dict:
        def stage(s: StageCost) -> dict:
            return {**asdict(s), "days": s.days}

        return {
            "gpu": self.hardware.gpu,
            "peak_tflops": self.hardware.peak_tflops,
            "peak_source": self.hardware.peak_source,
            "tdp_watts": self.hardware.tdp_watts,
            "formula": self.formula,
            "seq_len": self.seq_len,
            "price_per_gpu_hour": self.price_per_gpu_hour,
            "pue": self.pue,
            "carbon_kg_per_kwh": self.carbon_kg_per_kwh,
            "stages": [stage(s) for s in self.stages],
            "total": {**asdict(self.total), "days": self.total.days},
            "from_scratch": stage(self.scratch),
            "saving": {
                "days": self.scratch.days - self.total.days,
                "time_fraction": self.time_saved,
                "speedup": self.speedup,
                "gpu_hours": self.scratch.gpu_hours - self.total.gpu_hours,
                "dollars": self.scratch.dollars - self.total.dollars,
            },
            "notes": self.notes,
        }


def cost_stage(
    plan: StagePlan, hw: Hardware, seq_len: int, formula: Formula, price: float, pue: float, carbon: float,
    notes: list[str] | None = None,
) -> StageCost:
    """Time and money of one stage at its throughput."""
    m = plan.model
    model_fpt = flops_per_token(m, seq_len, False, formula)
    hw_fpt = flops_per_token(m, seq_len, plan.recompute, formula)
    peak = hw.peak_tflops * 1e12
    if plan.tflops_per_gpu is not None:
        if plan.tflops_per_gpu > hw.peak_tflops:
            raise FlmError(
                f"stage '{plan.name}': tflops_per_gpu = {plan.tflops_per_gpu} exceeds the {hw.gpu} peak of "
                f"{hw.peak_tflops:g} TFLOP/s; check the measurement or set cost.peak_tflops"
            )
        achieved = plan.tflops_per_gpu * 1e12
        seconds = plan.tokens * hw_fpt / (plan.n_gpus * achieved)
        throughput: Literal["measured", "mfu"] = "measured"
    else:
        mfu = plan.mfu
        if mfu is None:
            mfu = DEFAULT_MFU
            if notes is not None:
                notes.append(
                    f"stage '{plan.name}' has no tflops_per_gpu and cost.mfu is unset: assumed MFU "
                    f"{DEFAULT_MFU:.0%} (set stages[i].tflops_per_gpu or cost.mfu)"
                )
        seconds = plan.tokens * model_fpt / (plan.n_gpus * mfu * peak)
        achieved = plan.tokens * hw_fpt / (seconds * plan.n_gpus)
        throughput = "mfu"
    gpu_hours = plan.n_gpus * seconds / 3600.0
    energy = gpu_hours * hw.tdp_watts / 1000.0 * pue if hw.tdp_watts is not None else None
    return StageCost(
        name=plan.name, d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads, d_ff=int(m.d_ff or 0),
        params=m.num_params(), tokens=plan.tokens, n_gpus=plan.n_gpus, tp=plan.tp, pp=plan.pp, dp=plan.dp,
        throughput=throughput, tflops_per_gpu=achieved / 1e12,
        mfu=plan.tokens * model_fpt / (seconds * plan.n_gpus * peak), hfu=achieved / peak,
        recompute=plan.recompute, model_flops_per_token=model_fpt, hardware_flops_per_token=hw_fpt,
        model_flops=plan.tokens * model_fpt, hardware_flops=plan.tokens * hw_fpt,
        full_recompute_flops=plan.tokens * flops_per_token(m, seq_len, True, formula),
        seconds=seconds, gpu_hours=gpu_hours, dollars=gpu_hours * price, energy_kwh=energy,
        co2_kg=energy * carbon if energy is not None else None,
    )


def _opt_sum(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def plan_cost(
    cfg: RunConfig, *, hardware: Hardware | None = None, measure: Callable[[], float] | None = None
) -> PlanCost:
    """Cost of every stage of ``cfg``, the totals, and the final model trained from scratch on all tokens
    at the final stage's throughput (the paper's 76.74-day estimate)."""
    cost = cfg.cost
    if cost.price_per_gpu_hour < 0:
        raise FlmError(f"cost.price_per_gpu_hour is {cost.price_per_gpu_hour}: a price cannot be negative")
    plans = stage_plans(cfg)
    hw = hardware or resolve_hardware(cost, measure)
    notes: list[str] = []
    if hw.peak_source == "measured":
        notes.append(f"peak {hw.peak_tflops * 1e3:.0f} GFLOP/s measured now (fp32 matmul on this CPU)")
    if hw.tdp_watts is None:
        notes.append(f"no TDP known for {hw.gpu!r}: set cost.tdp_watts for energy and CO2")
    args = (hw, cfg.seq_len, cost.formula, cost.price_per_gpu_hour, cost.pue, cost.carbon_kg_per_kwh)
    stages = [cost_stage(p, *args, notes=notes) for p in plans]
    last = plans[-1]
    all_tokens = sum(p.tokens for p in plans)
    scratch_plan = StagePlan(
        f"{last.name} (scratch)", last.model, all_tokens, last.n_gpus, last.tp, last.pp, last.dp,
        last.tflops_per_gpu, last.mfu, last.recompute,
    )
    scratch = cost_stage(scratch_plan, *args)
    total = Totals(
        tokens=all_tokens,
        model_flops=sum(s.model_flops for s in stages),
        hardware_flops=sum(s.hardware_flops for s in stages),
        full_recompute_flops=sum(s.full_recompute_flops for s in stages),
        seconds=sum(s.seconds for s in stages),
        gpu_hours=sum(s.gpu_hours for s in stages),
        dollars=sum(s.dollars for s in stages),
        energy_kwh=_opt_sum([s.energy_kwh for s in stages]),
        co2_kg=_opt_sum([s.co2_kg for s in stages]),
    )
    return PlanCost(
        hardware=hw, formula=cost.formula, seq_len=cfg.seq_len, price_per_gpu_hour=cost.price_per_gpu_hour,
        pue=cost.pue, carbon_kg_per_kwh=cost.carbon_kg_per_kwh, stages=stages, total=total, scratch=scratch,
        notes=notes,
    )
