"""`flm plan layout`: every TP·PP·DP layout of a stage, with its micro-batch size, pipeline schedule, sequence
parallelism and activation checkpointing, that flm can run (flm.distributed's checks) and that fits 90% of
the device (flm.scaling.memory's planner), ranked by the modelled step time (flm.scaling.perf.step)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from flm.config import ModelConfig, RunConfig, config_from_dict, config_to_dict, save_config
from flm.distributed.mesh import ParallelDims
from flm.errors import FlmError
from flm.hardware import Catalog, Gpu, Network
from flm.scaling.cost import stage_gpus
from flm.scaling.memory import BF16, GIB, HEADROOM, layout_peak_bytes
from flm.scaling.perf.stage_layout import AC_RECOMPUTE, FLM_SCHEDULE, shape_of, stage_layout
from flm.scaling.perf.step import CONSTANTS, Breakdown, Constants, DpMode, Layout, Shape, step_time
from flm.stages import Stage, resolve_stages

TP_CHOICES = (1, 2, 4, 8)
MICROBATCH_CHOICES = (1, 2, 4)


@dataclass(frozen=True)
class Candidate:
    layout: Layout
    activation_checkpointing: str  # flm's mode: none / selective / full
    memory_bytes: int
    time: Breakdown

    def to_dict(self) -> dict:
        lay = self.layout
        return {"tp": lay.tp, "pp": lay.pp, "dp": lay.dp, "microbatch": lay.microbatch,
                "microbatches": self.time.microbatches, "schedule": lay.schedule if lay.pp > 1 else None,
                "sequence_parallel": lay.sequence_parallel and lay.tp > 1,
                "activation_checkpointing": self.activation_checkpointing, "memory_gib": self.memory_bytes / GIB,
                "tag": lay.tag(), **self.time.to_dict()}


@dataclass
class LayoutSearch:
    stage: str
    n_gpus: int
    gpu: Gpu
    network: Network
    dp_mode: DpMode
    usable_bytes: float
    ranked: list[Candidate] = field(default_factory=list)  # fitting candidates, fastest first
    too_big: int = 0  # candidates flm could run that do not fit
    too_big_faster: int = 0  # of those, faster than the best that fits
    invalid: int = 0  # layouts flm refuses (a degree that does not divide, SP with PP, ...)
    configured: Candidate | None = None  # the stage's own layout, as the config gives it

    def best_per_layout(self) -> list[Candidate]:
        """The fastest variant of each TP·PP·DP, fastest first."""
        seen: dict[tuple[int, int, int], Candidate] = {}
        for c in self.ranked:
            seen.setdefault((c.layout.tp, c.layout.pp, c.layout.dp), c)
        return list(seen.values())

    def rank_of(self, tp: int, pp: int, dp: int) -> int | None:
        """1-based rank of a TP·PP·DP among the layouts (best variant each); None if none of it fits."""
        for i, c in enumerate(self.best_per_layout()):
            if (c.layout.tp, c.layout.pp, c.layout.dp) == (tp, pp, dp):
                return i + 1
        return None

    def binding(self) -> str:
        """Why the best layout is not faster: memory when faster layouts do not fit, else its largest cost."""
        if not self.ranked:
            return "memory: no layout fits"
        best = self.ranked[0].time.binding()
        if self.too_big_faster:
            return f"memory ({self.too_big_faster} faster variants do not fit); then {best}"
        return best

    def to_dict(self, top: int) -> dict:
        return {"stage": self.stage, "n_gpus": self.n_gpus, "gpu": self.gpu.name, "network": self.network.name,
                "dp_mode": self.dp_mode, "usable_gib": self.usable_bytes / GIB, "fitting": len(self.ranked),
                "too_big": self.too_big, "invalid": self.invalid, "binding": self.binding(),
                "layouts": [c.to_dict() for c in self.best_per_layout()[:top]],
                "configured": self.configured.to_dict() if self.configured else None,
                "configured_rank": (self.rank_of(self.configured.layout.tp, self.configured.layout.pp,
                                                 self.configured.layout.dp) if self.configured else None)}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(m: ModelConfig, n_gpus: int, batch: int) -> Iterator[tuple[Layout, str]]:
    """Every layout of ``n_gpus`` for a stage with ``batch`` sequences per step (flm's checks come later)."""
    for tp in TP_CHOICES:
        if n_gpus % tp:
            continue
        for pp in _divisors(n_gpus // tp):
            if pp > m.n_layers:
                break
            dp = n_gpus // (tp * pp)
            if batch % dp:
                continue
            scheds = ("1f1b", "interleaved", "gpipe") if pp > 1 else ("1f1b",)
            sps = (False, True) if tp > 1 and pp == 1 else (False,)
            for mb, sched, sp, ac in itertools.product(MICROBATCH_CHOICES, scheds, sps, AC_RECOMPUTE):
                if (batch // dp) % mb:
                    continue
                yield Layout(tp, pp, dp, microbatch=mb, schedule=sched, sequence_parallel=sp,
                             recompute=AC_RECOMPUTE[ac]), ac


def _evaluate(m: ModelConfig, shape: Shape, batch: int, lay: Layout, ac: str, dp_mode: DpMode, gpu: Gpu,
              net: Network, c: Constants, where: str = "parallel") -> Candidate:
    """Checks as flm's preflight (raises FlmError), the memory planner's peak bytes (with the data
    parallelism ``dp_mode`` names), and the step time. ``shape`` is ``shape_of(m, seq_len)``, built once."""
    n_micro = batch // (lay.dp * lay.microbatch)
    dims = ParallelDims(pp=lay.pp, dp=lay.dp, tp=lay.tp, world_size=lay.n_gpus,
                        sequence_parallel=lay.sequence_parallel, pp_schedule=FLM_SCHEDULE[lay.schedule],
                        microbatches=n_micro)
    dims.check_model(m, shape.seq_len, where, batch=batch)
    peak = layout_peak_bytes(m, dims, lay.microbatch, n_micro, shape.seq_len, ac, BF16, dp_mode=dp_mode)
    lay = Layout(**{**lay.__dict__, "dp_mode": dp_mode})
    return Candidate(lay, ac, peak, step_time(shape, lay, batch, gpu, net, c))


def search_stage(cfg: RunConfig, stage: Stage, n_gpus: int, gpu: Gpu, net: Network, dp_mode: DpMode,
                 c: Constants = CONSTANTS, on_progress: Callable[[int, int], None] | None = None) -> LayoutSearch:
    """Rank every layout of ``stage`` on ``n_gpus`` GPUs: whole nodes, or part of one node."""
    per = gpu.gpus_per_node
    if (n_gpus > per and n_gpus % per) or per % min(n_gpus, per):
        raise FlmError(f"{n_gpus} GPUs (--gpus, or the stage's layout) is not a multiple of the {per} GPUs of a "
                       f"{gpu.name} node; give whole nodes, e.g. --gpus {max(1, round(n_gpus / per)) * per}")
    m, seq, batch = stage.model, cfg.seq_len, stage.batch_size
    usable = gpu.hbm_gib * GIB * (1 - HEADROOM)
    out = LayoutSearch(stage.name, n_gpus, gpu, net, dp_mode, usable)
    out.configured = configured(cfg, stage, n_gpus, gpu, net, dp_mode, c)  # first: its errors are the user's
    todo = list(candidates(m, n_gpus, batch))
    shape = shape_of(m, seq)
    fits: list[Candidate] = []
    big: list[Candidate] = []
    for i, (lay, ac) in enumerate(todo):
        if on_progress is not None:  # counted before the try: a refused layout is searched too
            on_progress(i + 1, len(todo))
        try:
            cand = _evaluate(m, shape, batch, lay, ac, dp_mode, gpu, net, c)
        except FlmError:
            out.invalid += 1
            continue
        (fits if cand.memory_bytes <= usable else big).append(cand)
    out.ranked = sorted(fits, key=lambda k: k.time.step)
    out.too_big = len(big)
    if out.ranked:
        out.too_big_faster = sum(b.time.step < out.ranked[0].time.step for b in big)
    return out


def configured(cfg: RunConfig, stage: Stage, n_gpus: int, gpu: Gpu, net: Network, dp_mode: DpMode,
               c: Constants = CONSTANTS) -> Candidate | None:
    """The stage's own layout (as its config gives it) on ``n_gpus``; None when its tp·pp·dp is another count.
    A layout that does not divide the model or the batch is the user's error, raised as flm's preflight does."""
    lay = stage_layout(cfg, stage, n_gpus, dp_mode)
    if lay is None:
        return None
    return _evaluate(stage.model, shape_of(stage.model, cfg.seq_len), stage.batch_size, lay,
                     stage.cfg.train.activation_checkpointing, dp_mode, gpu, net, c, where=stage.parallel_where)


def timed(fn: Callable[[Callable[[int, int], None]], LayoutSearch], bar_factory) -> LayoutSearch:
    """Run ``fn`` with a progress callback that opens a bar (``bar_factory(total)``) once a second has passed."""
    start, bar, ctx = time.perf_counter(), None, None

    def tick(done: int, total: int) -> None:
        nonlocal bar, ctx
        if bar is None and time.perf_counter() - start > 1.0:
            ctx = bar_factory(total)
            bar = ctx.__enter__()
            bar.update(completed=done)
        elif bar is not None:
            bar.advance(1)

    try:
        return fn(tick)
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)


def resolve_hardware(catalog: Catalog, gpu: str, network: str | None, where: str = "--gpu") -> tuple[Gpu, Network]:
    g = catalog.gpu(gpu, where)
    return g, catalog.network(network or g.network, "--network" if network else f"gpus.{g.name}.network")


def pick_stages(cfg: RunConfig, stage: str | None) -> list[Stage]:
    """All stages, or the one ``--stage`` names (1-based index or name)."""
    plan = resolve_stages(cfg)
    if stage is None:
        return plan
    for i, st in enumerate(plan):
        if stage == str(i + 1) or stage == st.name:
            return [st]
    names = ", ".join(f"{i + 1} ({st.name})" for i, st in enumerate(plan))
    raise FlmError(f"--stage {stage!r} is not a stage of {cfg.name}; give one of {names}")


def stage_gpu_count(cfg: RunConfig, stage: Stage, gpus: int | None) -> int:
    if gpus is not None:
        if gpus < 1:
            raise FlmError(f"--gpus {gpus}: give a positive number of GPUs")
        return gpus
    return stage_gpus(cfg, stage)[0]


def write_best(cfg: RunConfig, searches: list[LayoutSearch], path: str) -> None:
    """``cfg`` with each searched stage's parallel table set to its best layout, saved to ``path``."""
    data = config_to_dict(cfg)
    if not data.get("stages"):
        data["stages"] = [{}]
    names = [st.get("name") for st in data["stages"]]
    for s in searches:
        if not s.ranked:
            raise FlmError(f"stage {s.stage}: no layout fits, nothing to write")
        lay = s.ranked[0].layout
        i = names.index(s.stage) if s.stage in names else 0
        table = {"tp": lay.tp, "pp": lay.pp, "dp": lay.dp, "sequence_parallel": lay.sequence_parallel and lay.tp > 1}
        if lay.pp > 1:
            table |= {"pp_schedule": FLM_SCHEDULE[lay.schedule], "microbatches": s.ranked[0].time.microbatches}
        data["stages"][i]["parallel"] = table
    save_config(config_from_dict(data, where="the best layouts"), path)
