"""The stage plan of a run: what every stage trains, derived once for `flm run`, its preflight and `flm cost`;
the shape a growth makes (``grow_shape``), and the checks that need the whole plan.

A config without ``[[stages]]`` is a one-stage plan. A stage gives its length in ``steps`` or in ``tokens``;
one given in tokens keeps that exact count (what `flm cost` prices) and trains
``ceil(tokens / (batch_size · seq_len))`` steps. Every check that needs the whole plan (a growth spec that
cannot work, a ramp or a warmup longer than the steps it covers) happens here, before anything trains or is priced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flm.config import (
    GrowthConfig,
    ModelConfig,
    ParallelConfig,
    RunConfig,
    StageConfig,
    _validated,
    check_warmup,
    config_from_dict,
    config_to_dict,
    parse_override,
    weights_problem,
)
from flm.errors import FlmError


@dataclass(frozen=True)
class Stage:
    """One stage of a plan: plain data, read from the config once by ``resolve_stages``."""

    index: int  # 1-based, as people count stages
    name: str  # stages[i].name, else "stage N"; the run's name for a plan without [[stages]]
    where: str  # the config table that defines it, for error messages: "stages[i]", or "config" without stages
    cfg: RunConfig  # a single-stage config for training: this stage's model, steps, batch, LR, parallel layout
    model: ModelConfig  # cfg.model
    batch_size: int  # cfg.train.batch_size
    parallel: ParallelConfig  # cfg.parallel
    folder: str  # the stage's folder inside a run folder: "stage<index>"
    steps: int  # optimizer steps
    tokens: int  # what the stage trains on: as given, or steps · batch_size · seq_len
    growth: GrowthConfig | None  # how it grows out of the previous stage; None for the first
    tflops_per_gpu: float | None = None  # measured hardware TFLOP/s per GPU, for `flm cost`
    lr: float | None = None  # stages[i].lr: its peak (restart); inherit: the plan's peak (first), start LR (later)
    warmup_steps: int | None = None  # stages[i].warmup_steps; None: optim.warmup_steps
    parallel_where: str = "parallel"  # the table that sets its layout: "stages[i].parallel", or "parallel"
    lr_scale: float | None = None  # stages[i].lr_scale (inherit): multiplies the inherited LR from this stage on


def stage_models(cfg: RunConfig) -> list[ModelConfig]:
    """Model config of every stage (one entry when no stages are listed); FlmError on a growth that cannot work."""
    models = [cfg.model]
    for i, st in enumerate(cfg.stages[1:], start=1):
        assert st.grow is not None
        models.append(grow_shape(st.grow, models[-1], where=f"stages[{i}].grow"))
    return models


def grow_shape(growth: GrowthConfig, model: ModelConfig, where: str = "grow") -> ModelConfig:
    """The shape ``growth`` makes of ``model``; refuses to shrink any dimension; keeps head_dim. When the
    attention width equals d_model and only d_model is given, the heads follow the width, as in FLM-101B."""
    update: dict[str, Any] = {}
    for key in ("d_model", "d_ff", "n_heads", "n_layers"):
        new = getattr(growth, key)
        if new is None:
            continue
        old = getattr(model, key)
        if new < old:
            raise FlmError(
                f"{where}.{key} = {new} is smaller than the current {old}: growth cannot shrink a "
                f"dimension; set {where}.{key} >= {old}"
            )
        update[key] = new
    hd = model.head_dim
    assert hd is not None
    if growth.d_model is not None and growth.n_heads is None and model.attn_dim == model.d_model:
        if growth.d_model % hd:
            raise FlmError(
                f"{where}.d_model = {growth.d_model} is not a multiple of head_dim {hd}: growth keeps "
                f"head_dim and adds heads with the width; pick d_model as a multiple of {hd}, or set "
                f"{where}.n_heads to keep the attention width apart from d_model"
            )
        update["n_heads"] = growth.d_model // hd
    _check_method(growth, model, update, where)
    if model.mup_base_width and growth.readout == "keep" and update.get("d_model", model.d_model) != model.d_model:
        # readout multiplier output_mult / width_mult unchanged: the old logits are not rescaled
        update["output_mult"] = model.output_mult * update["d_model"] / model.d_model
    data = model.model_dump()
    data.update(update)
    return _validated(ModelConfig, data, where=f"{where} result")

def _check_method(growth: GrowthConfig, model: ModelConfig, update: dict[str, Any], where: str) -> None:
    """The shapes a baseline can reach: G_stack repeats the whole stack (depth only, a multiple of it),
    HyperCloning duplicates the width (integer factors, depth unchanged)."""
    widths = ("d_model", "d_ff", "n_heads")
    if growth.method == "gstack":
        if any(update.get(k, getattr(model, k)) != getattr(model, k) for k in widths):
            raise FlmError(f"{where}.method = 'gstack' stacks layers only; drop d_model/d_ff/n_heads from "
                           "this growth (grow the width in another stage, or use method 'net2net')")
        if update.get("n_layers", model.n_layers) % model.n_layers:
            raise FlmError(f"{where}.n_layers = {update['n_layers']}: gstack repeats all {model.n_layers} "
                           f"layers, so it needs a multiple of {model.n_layers}; pick one, or use method 'net2net'")
    moves = growth.depth_position != "top" and update.get("n_layers", model.n_layers) != model.n_layers
    if growth.method == "net2net" and model.scale_attn_by_inverse_layer_idx and moves:
        raise FlmError(f"{where}.method = 'net2net' with model.scale_attn_by_inverse_layer_idx: blocks placed "
                       "between old ones renumber them and change their attention scale (no masks to ramp "
                       "it); set depth_position = 'top', or use method 'msg'")
    if growth.method == "hyperclone":
        if update.get("n_layers", model.n_layers) != model.n_layers:
            raise FlmError(f"{where}.method = 'hyperclone' grows the width only; drop n_layers from this "
                           "growth (grow the depth in another stage, or use method 'gstack' or 'net2net')")
        for k in widths:
            if update.get(k, getattr(model, k)) % getattr(model, k):
                raise FlmError(f"{where}.{k} = {update[k]}: hyperclone duplicates every unit, so it needs a "
                               f"multiple of the current {getattr(model, k)}; pick one, or use method 'net2net'")


def resolve_stages(cfg: RunConfig) -> list[Stage]:
    """Every stage of ``cfg`` (one when it lists no ``[[stages]]``); raises FlmError on a plan that cannot run."""
    models = stage_models(cfg)  # raises FlmError on a bad growth spec
    entries: list[StageConfig | None] = list(cfg.stages) or [None]
    stages: list[Stage] = []
    for i, (st, model) in enumerate(zip(entries, models)):
        stage_cfg = _stage_config(cfg, i, st, model)
        tc = stage_cfg.train
        read = {"cfg": stage_cfg, "model": stage_cfg.model, "batch_size": tc.batch_size,
                "parallel": stage_cfg.parallel, "folder": f"stage{i + 1}", "steps": tc.steps}
        tokens = tc.steps * tc.batch_size * cfg.seq_len  # all > 0: the config refuses 0 steps or tokens
        if st is None:
            stages.append(Stage(index=1, name=cfg.name, where="config", tokens=tokens, growth=None, **read))
            continue
        where = f"stages[{i}]"
        if st.grow is not None and st.grow.ramp_steps > tc.steps:
            raise FlmError(
                f"{where}.grow.ramp_steps ({st.grow.ramp_steps}) is longer than the stage ({tc.steps} steps): "
                "the masks would still be on when the next stage starts; shorten the ramp"
            )
        stages.append(Stage(
            index=i + 1, name=st.name or f"stage {i + 1}", where=where, tokens=st.tokens or tokens,
            growth=st.grow, tflops_per_gpu=st.tflops_per_gpu, lr=st.lr, warmup_steps=st.warmup_steps,
            parallel_where=f"{where}.parallel" if st.parallel else "parallel", lr_scale=st.lr_scale, **read,
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


def check_stage_overrides(cfg: RunConfig, overrides: list[str]) -> None:
    """``--set train.steps=N`` on a plan whose stages all set their steps would be silently ignored."""
    if cfg.stages and all(st.steps or st.tokens for st in cfg.stages):
        for text in overrides:
            if parse_override(text)[0] == ["train", "steps"]:
                raise FlmError(
                    f"--set {text}: this config's [[stages]] set their own steps, so train.steps is unused; "
                    "set a stage's, e.g. --set stages[0].steps=50"
                )


def check_plan(cfg: RunConfig) -> RunConfig:
    """What a loaded config must pass besides its schema: every growth of its plan can work."""
    stage_models(cfg)
    return cfg
