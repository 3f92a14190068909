"""What a growth plan costs: FLOPs, time, GPU-hours, dollars, energy and CO2, the FLM-101B way.

FLOPs per token come from ``flm.flops`` (Narayanan et al. 2021, as the paper).

Energy is GPU-hours × TDP × PUE and CO2 is energy × grid intensity, as in the paper's Table 3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from flm.config import CostConfig, ModelConfig, RunConfig
from flm.errors import FlmError
from flm.flops import Formula, flops_per_token
from flm.hardware import load_catalog
from flm.scaling.perf.stage_layout import shape_of, stage_layout
from flm.scaling.perf.step import Breakdown, step_time
from flm.stages import Stage, resolve_stages

SECONDS_PER_DAY = 86400.0
DEFAULT_MFU = 0.4  # assumed when a stage has neither tflops_per_gpu nor cost.mfu; the output says so


# ---------------------------------------------------------------------------- GPUs and recompute per stage


def stage_gpus(cfg: RunConfig, stage: Stage) -> tuple[int, int, int, int]:
    """GPUs, tp, pp and dp of a stage: its parallel layout, with cost.n_gpus filling a dp of -1."""
    par = stage.parallel
    tp, pp = par.tp, par.pp
    if par.dp > 0:
        n = par.dp * tp * pp
        if "n_gpus" in cfg.cost.model_fields_set and n != cfg.cost.n_gpus:
            raise FlmError(
                f"{stage.where}: parallel tp·pp·dp = {tp}·{pp}·{par.dp} = {n} GPUs but cost.n_gpus = "
                f"{cfg.cost.n_gpus}; make them agree or drop cost.n_gpus"
            )
        return n, tp, pp, par.dp
    n = cfg.cost.n_gpus
    if n % (tp * pp):
        raise FlmError(
            f"{stage.where}: cost.n_gpus = {n} is not a multiple of tp·pp = {tp * pp}; set parallel.dp or change "
            "cost.n_gpus"
        )
    return n, tp, pp, n // (tp * pp)


def recompute_share(cfg: RunConfig, stage: Stage) -> float:
    """Share of the stage's blocks that recompute their activations (flm.stages checked recompute_layers)."""
    layers = cfg.cost.recompute_layers
    if layers is not None:
        return layers[stage.index - 1] / stage.model.n_layers
    return 1.0 if cfg.cost.recompute else 0.0


# -------------------------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class Hardware:
    gpu: str
    peak_tflops: float
    peak_source: Literal["known", "given", "measured"]
    tdp_watts: float | None


def resolve_hardware(cost: CostConfig, measure: Callable[[], float] | None = None) -> Hardware:
    """Peak and TDP of cost.gpu: given > known > measured (gpu = 'cpu'); else one clear error."""
    spec = load_catalog().find(cost.gpu)  # the one GPU-name resolver (flm.hardware.Catalog.find)
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
        f"or --peak-tflops, or use one of {', '.join(load_catalog().gpus)}, cpu"
    )


def measure_cpu_peak_tflops() -> float:
    """Best fp32 matmul TFLOP/s of this CPU (the roof the trainer's MFU uses on CPU)."""
    from flm.hardware import measure_matmul_peak  # torch: only when a CPU is costed, not for `flm cost`'s GPUs

    return measure_matmul_peak("cpu", seconds=0.3) / 1e12


# --------------------------------------------------------------------------------------------- costing


@dataclass(frozen=True)
class Totals:
    """What a stage, or the whole plan, uses: tokens, FLOPs, time, money, energy."""

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
class StageCost(Totals):
    """One stage's shape, layout and throughput, with its totals."""

    name: str
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    params: int
    n_gpus: int
    tp: int
    pp: int
    dp: int
    throughput: Literal["measured", "mfu", "modelled"]
    tflops_per_gpu: float  # hardware TFLOP/s per GPU: measured, implied by the MFU, or modelled
    mfu: float  # model FLOPs utilization
    hfu: float  # hardware FLOPs utilization
    recompute: float
    model_flops_per_token: float
    hardware_flops_per_token: float
    breakdown: dict | None = None  # the performance model's step (modelled stages only)
    reported_tflops: float | None = None  # cost.reported: a published figure, shown beside, never the estimate
    reported_days: float | None = None


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
    reported_source: str | None = None  # cost.reported.source, when the stages carry reported figures

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
            "reported_source": self.reported_source,
        }


def cost_stage(
    cfg: RunConfig, stage: Stage, hw: Hardware, notes: list[str] | None = None, *, name: str | None = None,
    tokens: int | None = None, model_only: bool = False,
) -> StageCost:
    """Time and money of one stage at its throughput: measured (stages[i].tflops_per_gpu), else given as
    cost.mfu, else modelled (flm.scaling.perf), else an assumed MFU. ``model_only`` ignores the measured figure
    (cost.recompute_layers still says what the modelled run recomputes). ``name`` and ``tokens`` replace the
    stage's (the from-scratch run of the final shape is the last stage on all the plan's tokens)."""
    cost, seq_len, m = cfg.cost, cfg.seq_len, stage.model
    name = stage.name if name is None else name
    tokens = stage.tokens if tokens is None else tokens
    n_gpus, tp, pp, dp = stage_gpus(cfg, stage)
    recompute = recompute_share(cfg, stage)
    model_fpt = flops_per_token(m, seq_len, False, cost.formula)
    peak = hw.peak_tflops * 1e12
    measured = None if model_only else stage.tflops_per_gpu
    modelled = _model_step(cfg, stage, n_gpus, hw)
    breakdown = modelled[1].to_dict() if modelled is not None else None
    if measured is not None:
        if measured > hw.peak_tflops:
            raise FlmError(
                f"stage '{name}': tflops_per_gpu = {measured} exceeds the {hw.gpu} peak of "
                f"{hw.peak_tflops:g} TFLOP/s; check the measurement or set cost.peak_tflops"
            )
        hw_fpt = flops_per_token(m, seq_len, recompute, cost.formula)
        achieved = measured * 1e12
        seconds = tokens * hw_fpt / (n_gpus * achieved)
        throughput: Literal["measured", "mfu", "modelled"] = "measured"
    elif modelled is not None and cost.mfu is None:
        recompute, step = modelled
        hw_fpt = flops_per_token(m, seq_len, recompute, cost.formula)
        seconds = tokens / (stage.batch_size * seq_len) * step.step
        achieved = tokens * hw_fpt / (seconds * n_gpus)
        throughput = "modelled"
    else:
        mfu = cost.mfu
        if mfu is None:
            mfu = DEFAULT_MFU
            if notes is not None:
                notes.append(
                    f"stage '{name}' has no tflops_per_gpu, cost.mfu is unset and {hw.gpu!r} is not in "
                    f"flm/hardware.toml: assumed MFU {DEFAULT_MFU:.0%} (set stages[i].tflops_per_gpu or cost.mfu)"
                )
        hw_fpt = flops_per_token(m, seq_len, recompute, cost.formula)
        seconds = tokens * model_fpt / (n_gpus * mfu * peak)
        achieved = tokens * hw_fpt / (seconds * n_gpus)
        throughput = "mfu"
    gpu_hours = n_gpus * seconds / 3600.0
    energy = gpu_hours * hw.tdp_watts / 1000.0 * cost.pue if hw.tdp_watts is not None else None
    return StageCost(
        name=name, d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads, d_ff=int(m.d_ff or 0),
        params=m.num_params(), tokens=tokens, n_gpus=n_gpus, tp=tp, pp=pp, dp=dp,
        throughput=throughput, tflops_per_gpu=achieved / 1e12,
        mfu=tokens * model_fpt / (seconds * n_gpus * peak), hfu=achieved / peak,
        recompute=recompute, model_flops_per_token=model_fpt, hardware_flops_per_token=hw_fpt,
        model_flops=tokens * model_fpt, hardware_flops=tokens * hw_fpt,
        full_recompute_flops=tokens * flops_per_token(m, seq_len, True, cost.formula),
        seconds=seconds, gpu_hours=gpu_hours, dollars=gpu_hours * cost.price_per_gpu_hour, energy_kwh=energy,
        co2_kg=energy * cost.carbon_kg_per_kwh if energy is not None else None, breakdown=breakdown,
    )


def _model_step(cfg: RunConfig, stage: Stage, n_gpus: int, hw: Hardware) -> tuple[float, Breakdown] | None:
    """(share of blocks recomputed, the performance model's step) of the stage's own layout, or None when the
    GPU is not in the catalog (then an MFU is assumed). cost.recompute_layers / cost.recompute override the
    recompute that train.activation_checkpointing implies."""
    catalog = load_catalog()
    try:
        gpu = catalog.gpu(hw.gpu, where="cost.gpu")
    except FlmError:
        return None
    gpu = replace(gpu, peak_tflops=hw.peak_tflops)
    net = catalog.network(cfg.cost.network or gpu.network, where="cost.network")
    override = None
    if cfg.cost.recompute_layers is not None or cfg.cost.recompute:
        override = recompute_share(cfg, stage)
    lay = stage_layout(cfg, stage, n_gpus, cfg.cost.dp_mode, override)
    if lay is None:
        return None
    return lay.recompute, step_time(shape_of(stage.model, cfg.seq_len), lay, stage.batch_size, gpu, net)


def _check_recompute_layers(cfg: RunConfig, models: list[ModelConfig]) -> None:
    """One cost.recompute_layers entry per stage, each at most that stage's depth (a cost-only setting:
    checked by `flm cost`, not by training)."""
    layers = cfg.cost.recompute_layers
    if layers is None:
        return
    if len(layers) != len(models):
        raise FlmError(
            f"cost.recompute_layers has {len(layers)} entries for {len(models)} stage(s); give one per stage"
        )
    for i, (n, m) in enumerate(zip(layers, models)):
        if n > m.n_layers:
            where = f"stages[{i}]" if cfg.stages else "config"
            raise FlmError(f"cost.recompute_layers[{i}] = {n} exceeds the {m.n_layers} blocks of {where}")


def _with_reported(cfg: RunConfig, stages: list[StageCost]) -> list[StageCost]:
    """The stages with cost.reported's figures beside them (one entry per stage, checked here: a cost-only
    setting)."""
    rep = cfg.cost.reported
    if rep is None:
        return stages
    per: dict[str, list[float] | None] = {"tflops": rep.tflops_per_gpu, "days": rep.days}
    for key, values in (("tflops_per_gpu", rep.tflops_per_gpu), ("days", rep.days)):
        if values is not None and len(values) != len(stages):
            raise FlmError(f"cost.reported.{key} has {len(values)} entries for {len(stages)} stage(s); give one "
                           "per stage")
    return [replace(s, **{f"reported_{k}": v[i] for k, v in per.items() if v is not None})
            for i, s in enumerate(stages)]


def _opt_sum(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def plan_cost(
    cfg: RunConfig, *, hardware: Hardware | None = None, measure: Callable[[], float] | None = None,
    model_only: bool = False,
) -> PlanCost:
    """Cost of every stage of ``cfg``, the totals, and the final model trained from scratch on all tokens
    at the final stage's throughput (the paper's 76.74-day estimate). ``model_only``: every stage's time
    from the performance model, measured figures ignored."""
    cost = cfg.cost
    if cost.price_per_gpu_hour < 0:
        raise FlmError(f"cost.price_per_gpu_hour is {cost.price_per_gpu_hour}: a price cannot be negative")
    plan = resolve_stages(cfg)
    _check_recompute_layers(cfg, [st.model for st in plan])
    hw = hardware or resolve_hardware(cost, measure)
    notes: list[str] = []
    if hw.peak_source == "measured":
        notes.append(f"peak {hw.peak_tflops * 1e3:.0f} GFLOP/s measured now (fp32 matmul on this CPU)")
    if hw.tdp_watts is None:
        notes.append(f"no TDP known for {hw.gpu!r}: set cost.tdp_watts for energy and CO2")
    stages = _with_reported(cfg, [cost_stage(cfg, s, hw, notes=notes, model_only=model_only) for s in plan])
    last = plan[-1]
    all_tokens = sum(s.tokens for s in plan)
    scratch = cost_stage(cfg, last, hw, name=f"{last.name} (scratch)", tokens=all_tokens, model_only=model_only)
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
        notes=notes, reported_source=cost.reported.source if cost.reported else None,
    )
