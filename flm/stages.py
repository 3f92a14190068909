"""The stage plan of a run: what every stage trains, derived once for `flm run`, its preflight and `flm cost`.

A config without ``[[stages]]`` is a one-stage plan. A stage gives its length in ``steps`` or in ``tokens``;
one given in tokens keeps that exact count (what `flm cost` prices) and trains
``ceil(tokens / (batch_size · seq_len))`` steps. Every check that needs the whole plan (a growth spec that
cannot work, a ramp or a warmup longer than the steps it covers) happens here, before anything trains or is priced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flm.config import (
    GrowthConfig,
    ModelConfig,
    ParallelConfig,
    RunConfig,
    StageConfig,
    check_warmup,
    config_from_dict,
    config_to_dict,
    weights_problem,
)
from flm.errors import FlmError


@dataclass(frozen=True)
class Stage:
    """One stage of a plan."""

    index: int  # 1-based, as people count stages
    name: str  # stages[i].name, else "stage N"; the run's name for a plan without [[stages]]
    where: str  # the config table that defines it, for error messages: "stages[i]", or "config" without stages
    cfg: RunConfig  # a single-stage config for training: this stage's model, steps, batch, LR, parallel layout
    steps: int  # optimizer steps
    tokens: int  # what the stage trains on: as given, or steps · batch_size · seq_len
    growth: GrowthConfig | None  # how it grows out of the previous stage; None for the first
    tflops_per_gpu: float | None  # measured hardware TFLOP/s per GPU, for `flm cost`
    lr: float | None  # stages[i].lr: the stage's peak (restart); inherit: the plan's peak (first), start LR (later)
    warmup_steps: int | None  # stages[i].warmup_steps; None: optim.warmup_steps
    parallel_where: str = "parallel"  # the table that sets its layout: "stages[i].parallel", or "parallel"
    lr_scale: float | None = None  # stages[i].lr_scale (inherit): multiplies the inherited LR from this stage on

    @property
    def model(self) -> ModelConfig:
        return self.cfg.model

    @property
    def batch_size(self) -> int:
        return self.cfg.train.batch_size

    @property
    def parallel(self) -> ParallelConfig:
        return self.cfg.parallel

    @property
    def folder(self) -> str:
        """The stage's folder inside a run folder."""
        return f"stage{self.index}"


def resolve_stages(cfg: RunConfig) -> list[Stage]:
    """Every stage of ``cfg`` (one when it lists no ``[[stages]]``); raises FlmError on a plan that cannot run."""
    models = cfg.stage_models()  # raises FlmError on a bad growth spec
    entries: list[StageConfig | None] = list(cfg.stages) or [None]
    stages: list[Stage] = []
    for i, (st, model) in enumerate(zip(entries, models)):
        stage_cfg = _stage_config(cfg, i, st, model)
        steps = stage_cfg.train.steps
        tokens = steps * stage_cfg.train.batch_size * cfg.seq_len  # all > 0: the config refuses 0 steps or tokens
        if st is None:
            stages.append(Stage(
                index=1, name=cfg.name, where="config", cfg=stage_cfg, steps=steps, tokens=tokens, growth=None,
                tflops_per_gpu=None, lr=None, warmup_steps=None,
            ))
            continue
        where = f"stages[{i}]"
        if st.grow is not None and st.grow.ramp_steps > steps:
            raise FlmError(
                f"{where}.grow.ramp_steps ({st.grow.ramp_steps}) is longer than the stage ({steps} steps): "
                "the masks would still be on when the next stage starts; shorten the ramp"
            )
        stages.append(Stage(
            index=i + 1, name=st.name or f"stage {i + 1}", where=where, cfg=stage_cfg, steps=steps,
            tokens=st.tokens or tokens, growth=st.grow, tflops_per_gpu=st.tflops_per_gpu, lr=st.lr,
            warmup_steps=st.warmup_steps, parallel_where=f"{where}.parallel" if st.parallel else "parallel",
            lr_scale=st.lr_scale,
        ))
    _check_warmups(cfg, stages)
    _check_lr_keys(cfg, stages)
    return stages


def _check_lr_keys(cfg: RunConfig, stages: list[Stage]) -> None:
    """Under 'inherit' a later stage continues the previous stage's LR (flm.train.schedule) unless it names
    a start LR (``lr``) or a factor (``lr_scale``), one of the two; 'restart' gives each stage its ``lr``
    and decays it over the stage, so neither ``lr_scale`` nor the shared horizon ``optim.decay_steps`` apply."""
    if cfg.lr_mode == "restart" and cfg.optim.decay_steps is not None:
        raise FlmError(
            f"optim.decay_steps = {cfg.optim.decay_steps}: lr_mode 'restart' decays every stage over its own "
            "steps; drop decay_steps, or set lr_mode = 'inherit' for one schedule with that horizon"
        )
    for s in stages:
        later = s.index > 1
        if cfg.lr_mode == "inherit" and later and s.lr is not None and s.lr_scale is not None:
            raise FlmError(
                f"{s.where} sets both lr ({s.lr}) and lr_scale ({s.lr_scale}): under lr_mode 'inherit' each names "
                f"the LR stage {s.index} moves to; keep one"
            )
        if s.lr_scale is not None and (cfg.lr_mode != "inherit" or not later):
            why = "the first stage has no LR to inherit" if not later else "lr_mode 'restart' gives each stage its lr"
            raise FlmError(f"{s.where}.lr_scale: {why}; set {s.where}.lr instead")
        if cfg.lr_mode == "inherit" and later and s.warmup_steps and s.lr_scale is None and s.lr is None:
            raise FlmError(
                f"{s.where}.warmup_steps = {s.warmup_steps}: under lr_mode 'inherit' a later stage's warmup moves "
                f"from the inherited LR to the stage's start LR; set {s.where}.lr (or lr_scale), or drop the warmup"
            )


def _stage_config(cfg: RunConfig, i: int, st: StageConfig | None, model: ModelConfig) -> RunConfig:
    """The plan's config with stage ``i``'s model, batch, LR, parallel layout and steps, without [[stages]]."""
    data = config_to_dict(cfg)
    data.pop("stages", None)
    data["model"] = config_to_dict(model)
    train, optim = data["train"], data["optim"]
    if st is not None:
        if st.batch_size:
            train["batch_size"] = st.batch_size
        if st.lr:
            optim["lr"] = st.lr
        if st.parallel:
            data["parallel"] = config_to_dict(st.parallel)
        if st.data:
            data["data"]["train"] = stage_mixture(cfg, i, st)
        if st.steps:
            train["steps"] = st.steps
        elif st.tokens:
            train["steps"] = math.ceil(st.tokens / (train["batch_size"] * cfg.seq_len))
        else:
            raise FlmError(f"stages[{i}] sets neither steps nor tokens; give one, e.g. steps = 200")
    return config_from_dict(data, where=f"stages[{i}]")


def stage_mixture(cfg: RunConfig, i: int, st: StageConfig) -> list[dict]:
    """Stage ``i``'s training sources: ``stages[i].data.train`` or the plan's, reweighted by ``data.weights``."""
    assert st.data is not None
    sources = [config_to_dict(s) for s in (st.data.train if st.data.train is not None else cfg.data.train)]
    if st.data.weights is not None:
        if len(st.data.weights) != len(sources):
            raise FlmError(
                f"stages[{i}].data.weights lists {len(st.data.weights)} weights for {len(sources)} training "
                "sources; give one weight per source"
            )
        if any(w < 0 for w in st.data.weights):
            raise FlmError(f"stages[{i}].data.weights has a negative weight; weights are >= 0")
        for s, w in zip(sources, st.data.weights):
            s["weight"] = w
    problem = weights_problem([s.get("weight", 1.0) for s in sources], f"stages[{i}].data")
    if problem:
        raise FlmError(problem)
    return sources


def _check_warmups(cfg: RunConfig, stages: list[Stage]) -> None:
    """A warmup longer than the steps it covers never lets the LR reach its peak (flm.train.schedule):
    without stages optim.warmup_steps covers train.steps; under lr_mode 'restart' each stage warms up on its
    own; under 'inherit' the first stage's warmup covers the whole plan and a later stage's moves to its lr_scale."""
    if not cfg.stages:
        check_warmup("optim.warmup_steps", cfg.optim.warmup_steps, stages[0].steps, "train.steps")
        return
    first = stages[0]
    if cfg.lr_mode == "inherit":
        key = "stages[0].warmup_steps" if first.warmup_steps is not None else "optim.warmup_steps"
        warmup = first.warmup_steps if first.warmup_steps is not None else cfg.optim.warmup_steps
        total = sum(s.steps for s in stages)
        check_warmup(key, warmup, total, "the whole plan", "; lr_mode 'inherit' warms up once")
        for s in stages[1:]:
            if s.warmup_steps is not None:
                check_warmup(f"{s.where}.warmup_steps", s.warmup_steps, s.steps, f"stage {s.index}")
        return
    for s in stages:
        if s.warmup_steps is not None:
            check_warmup(f"{s.where}.warmup_steps", s.warmup_steps, s.steps, f"stage {s.index}")
        else:
            check_warmup(
                "optim.warmup_steps", cfg.optim.warmup_steps, s.steps,
                f"stage {s.index}", "; lr_mode 'restart' warms up every stage", f" or set {s.where}.warmup_steps",
            )

