"""Growth-plan search on a small proxy (``flm plan search``): under one fixed FLOP budget, which schedule of
a progressive run reaches the lowest validation loss?

A candidate keeps the plan's final shape and changes how it gets there:
- the share of the budget the first stage spends (``FIRST_SHARES``);
- the length of each growth's mask ramp, as a share of its stage (``RAMP_SHARES``; one value when no growth is
  MSG: the baselines have no ramp);
- the LR at growth: ``lr_mode`` as given or the other one ("restart": each stage its own warmup + cosine, the
  LR goes back up at growth, as the MSG paper resets it; every later stage re-warms over its ramp, at most
  ``optim.warmup_steps``), and under "inherit" the LR scale at each growth (``LR_SCALES``, ``stages[i].lr_scale``);
- the order of the growths (which dimensions grow first; only when the specs set disjoint shape keys);
- the first stage's shape: the given start or a smaller one (``grow_planner.start_shapes``: width x 3/4 or
  1/2, depth x 1/2), the first growth's spec completed so the final shape stays;
- the growth method of each boundary: "msg", "net2net", "gstack" (depth alone, an integer factor) and
  "hyperclone" (width alone, integer factors) where flm.stages accepts it for that boundary.
Steps per stage follow from the budget: the later stages split what the first leaves in proportion to their
FLOPs in the given plan, and each stage's steps are its FLOPs / (FLOPs per token x tokens per step).

The grid is the product of these (``grid``): per order, start and method assignment 5 x 3 x 4 = 60 schedules
(20 when no growth is MSG), 2,640 for configs/demo.toml; ``--trials`` draws a seeded subset. Each candidate
is one ``flm run`` (``run_plan``) into its own folder named by its tag, so an interrupted search resumes where
it stopped and finished candidates are read, not retrained; a candidate that uses the defaults of the
dimensions added later (given start, methods as given, lr_mode as given) keeps the tag it had before them.
The config as given is always candidate 0.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flm.config import GrowthConfig, ModelConfig, RunConfig, config_from_dict, config_to_dict, save_config
from flm.errors import FlmError
from flm.flops import flops_per_token
from flm.io import atomic_write
from flm.scaling.grow_planner import start_shapes
from flm.stages import grow_shape, resolve_stages, stage_models
from flm.train.run import run_plan, stage_summaries

FIRST_SHARES = (0.5, 0.6, 0.7, 0.8, 0.9)
RAMP_SHARES = (0.1, 0.25, 0.4)
LR_SCALES = (0.5, 1.0, 2.0)
METHODS = ("msg", "net2net", "gstack", "hyperclone")
LR_MODES = ("inherit", "restart")
# grow keys that do not set a shape (so two growths setting only these besides disjoint shape keys commute)
_NOT_SHAPE = {"ramp_steps", "depth_position", "depth_init", "depth_copy_from", "reset_optimizer", "readout", "method"}


@dataclass(frozen=True)
class PlanChoice:
    first_share: float | None  # share of the budget in the first stage; None: as the config gives it
    ramp_share: float | None  # each ramp / its stage's steps; None: as given
    lr_scale: float  # stages[i].lr_scale at every growth (1: the inherited LR continues)
    order: tuple[int, ...]  # growth i of the candidate is growth order[i] of the config
    start: tuple[int, int] | None = None  # (d_model, n_layers) of a smaller first stage; None: the config's
    methods: tuple[str, ...] | None = None  # grow.method of each growth (candidate's order); None: as given
    lr_mode: str | None = None  # "inherit" or "restart"; None: as the config gives it

    @property
    def tag(self) -> str:
        """A folder name for this candidate's run (the defaults of start, methods, lr_mode add nothing)."""
        if self.first_share is None:
            return "as-given"
        order = "".join(str(i) for i in self.order)
        tag = f"first{self.first_share:g}_ramp{self.ramp_share:g}_lr{self.lr_scale:g}_order{order}"
        if self.start is not None:
            tag += f"_start{self.start[0]}x{self.start[1]}"
        if self.methods is not None:
            tag += "_" + "-".join(self.methods)
        return tag + (f"_{self.lr_mode}" if self.lr_mode is not None else "")


@dataclass
class Trial:
    choice: PlanChoice
    steps: list[int]
    flops: float
    val_loss: float | None = None  # None: not run yet; inf: diverged

    def to_json(self) -> dict[str, Any]:
        return {"tag": self.choice.tag, **asdict(self.choice), "steps": self.steps, "flops": self.flops,
                "val_loss": self.val_loss}


def plan_flops(cfg: RunConfig) -> float:
    """Model FLOPs of the whole plan (tokens x FLOPs per token, per stage)."""
    seq = cfg.seq_len
    return sum(s.steps * s.batch_size * seq * flops_per_token(s.model, seq) for s in resolve_stages(cfg))


def _orders(cfg: RunConfig) -> list[tuple[int, ...]]:
    """Orders of the growths that keep the final shape: every permutation when their specs set disjoint
    shape keys, else only the given order."""
    specs = [set(config_to_dict(st.grow)) - _NOT_SHAPE for st in cfg.stages[1:] if st.grow]
    n = len(specs)
    disjoint = all(not (a & b) for a, b in itertools.combinations(specs, 2))
    return list(itertools.permutations(range(n))) if disjoint and n > 1 else [tuple(range(n))]


def _starts(cfg: RunConfig) -> list[ModelConfig]:
    """The config's first shape, then the smaller ones the search tries (the first growth's readout rule)."""
    readout = cfg.stages[1].grow.readout if cfg.stages[1].grow else "keep"
    return start_shapes(cfg.model, readout)


def _shaped(cfg: RunConfig, order: tuple[int, ...], start: tuple[int, int] | None,
            methods: tuple[str, ...] | None) -> dict[str, Any]:
    """The config as a dict with its growths in ``order``, its first stage ``start`` (the first growth then
    also grows every dimension the smaller start lacks back to the config's) and the growth ``methods``."""
    data = config_to_dict(cfg)
    stages = data["stages"]
    growths = [st.get("grow") for st in stages[1:]]
    for i, j in enumerate(order):
        stages[i + 1]["grow"] = dict(growths[j])
    if start is not None:
        small = next((m for m in _starts(cfg) if (m.d_model, m.n_layers) == start), None)
        if small is None:
            raise FlmError(f"start {start[0]}x{start[1]}: not a smaller start of {cfg.model.shape()} that "
                           "flm's growth reaches it from")
        first = stages[1]["grow"]
        for key in ("d_model", "d_ff", "n_layers"):
            if getattr(small, key) != getattr(cfg.model, key) and key not in first:
                first[key] = getattr(cfg.model, key)
        data["model"] = config_to_dict(small)
    for st, method in zip(stages[1:], methods or ()):
        st["grow"]["method"] = method
    return data


def _methods(cfg: RunConfig, order: tuple[int, ...], start: tuple[int, int] | None) -> list[tuple[str, ...] | None]:
    """Every assignment of ``METHODS`` to the growths (of this order and start) that flm.stages accepts; the
    assignment of the config itself is None. Raises FlmError when the shapes themselves do not work."""
    n = len(cfg.stages) - 1
    data = _shaped(cfg, order, start, ("msg",) * n)  # the shapes, by the rules every method shares
    models = stage_models(config_from_dict(data, where="candidate shapes"))
    options = []
    for i, (st, model) in enumerate(zip(data["stages"][1:], models), start=1):
        ok = []
        for m in METHODS:
            try:
                grow_shape(GrowthConfig(**{**st["grow"], "method": m}), model, where=f"stages[{i}].grow")
                ok.append(m)
            except FlmError:
                continue
        options.append(ok)
    given = tuple(st["grow"].get("method", "msg") for st in _shaped(cfg, order, start, None)["stages"][1:])
    return [None if combo == given else combo for combo in itertools.product(*options)]


def grid(cfg: RunConfig) -> list[PlanChoice]:
    """Every candidate of the search (module docstring), in a fixed order; candidate 0 is not in it."""
    if len(cfg.stages) < 2:
        raise FlmError("flm plan search needs a plan with [[stages]] and at least one growth; the config has none")
    out = []
    starts: list[tuple[int, int] | None] = [None] + [(m.d_model, m.n_layers) for m in _starts(cfg)[1:]]
    for order, start in itertools.product(_orders(cfg), starts):
        try:
            assignments = _methods(cfg, order, start)
        except FlmError:  # a start or an order the growth rules cannot grow through: not a candidate
            continue
        for methods in assignments:
            msg = any(m == "msg" for m in (methods or [st.grow.method for st in cfg.stages[1:] if st.grow]))
            for mode in (None, *(m for m in LR_MODES if m != cfg.lr_mode)):
                scales = LR_SCALES if (mode or cfg.lr_mode) == "inherit" else (1.0,)
                out += [PlanChoice(f, r, s, order, start, methods, mode) for f in FIRST_SHARES
                        for r in (RAMP_SHARES if msg else RAMP_SHARES[:1]) for s in scales]
    return out


def choices(cfg: RunConfig, trials: int, seed: int = 0, budget: float | None = None) -> list[PlanChoice]:
    """The config as given, then up to ``trials - 1`` distinct candidates drawn (seeded) from the grid; a
    drawn candidate that cannot run at ``budget`` (a ramp or warmup longer than its stage) is passed over."""
    if trials < 1:
        raise FlmError(f"--trials {trials}: search at least one candidate")
    pool = grid(cfg)
    random.Random(seed).shuffle(pool)
    budget = budget or plan_flops(cfg)
    out = [PlanChoice(None, None, 1.0, tuple(range(len(cfg.stages) - 1)))]
    for choice in pool:
        if len(out) >= trials:
            break
        try:
            candidate_config(cfg, choice, budget)
        except FlmError:
            continue
        out.append(choice)
    return out


def candidate_config(cfg: RunConfig, choice: PlanChoice, budget: float) -> RunConfig:
    """``cfg`` with the plan of ``choice``, its stages' steps set so the plan's FLOPs are about ``budget``;
    FlmError when that plan cannot run."""
    where = f"candidate {choice.tag}"
    if choice.first_share is None:
        data = config_to_dict(cfg)
        data["name"] = f"{cfg.name}-{choice.tag}"
        return _scaled(config_from_dict(data, where=where), budget)
    data = _shaped(cfg, choice.order, choice.start, choice.methods)
    data["name"] = f"{cfg.name}-{choice.tag}"
    models = stage_models(config_from_dict(data, where=where))  # the candidate's shapes
    given = resolve_stages(cfg)
    seq = cfg.seq_len
    per_step = [s.batch_size * seq * flops_per_token(m, seq) for s, m in zip(given, models)]
    later = [s.steps * s.batch_size * seq * flops_per_token(s.model, seq) for s in given[1:]]
    shares = [choice.first_share] + [(1 - choice.first_share) * f / sum(later) for f in later]
    mode = choice.lr_mode or cfg.lr_mode
    if choice.lr_mode is not None:
        data["lr_mode"] = mode
    if mode == "restart":
        data["optim"].pop("decay_steps", None)
    for st, share, f in zip(data["stages"], shares, per_step):
        st.pop("tokens", None)
        st["steps"] = max(1, round(share * budget / f))
        if st.get("grow") is None:
            continue
        ramp = st["grow"]["ramp_steps"] = max(1, round(choice.ramp_share * st["steps"]))
        if choice.lr_scale != 1.0:
            st["lr_scale"] = choice.lr_scale
        if choice.lr_mode == "restart":  # the LR rewinds at growth: a warmup again, over the ramp
            st.pop("lr_scale", None)
            st["warmup_steps"] = min(cfg.optim.warmup_steps, ramp)
        elif choice.lr_mode == "inherit" and st.get("lr") is None:  # one schedule: no warmup of its own
            st.pop("warmup_steps", None)
    out = config_from_dict(data, where=where)
    final = resolve_stages(out)[-1].model  # raises for a ramp or a warmup longer than its stage
    if final.shape() != given[-1].model.shape():  # a guard: _shaped keeps the final shape by design
        raise FlmError(f"{where}: grows to {final.shape()}, not the plan's final shape")
    return out


def _scaled(cfg: RunConfig, budget: float) -> RunConfig:
    """The plan as given, every stage's steps (and ramps) scaled by the same factor to meet ``budget``."""
    factor = budget / plan_flops(cfg)
    if abs(factor - 1) < 1e-9:
        return cfg
    data = config_to_dict(cfg)
    for st, s in zip(data["stages"], resolve_stages(cfg)):
        st.pop("tokens", None)
        st["steps"] = max(1, round(s.steps * factor))
        if st.get("grow") is not None:
            st["grow"]["ramp_steps"] = max(1, round(st["grow"]["ramp_steps"] * factor))
    return config_from_dict(data, where="the plan as given, scaled to the budget")


def final_val_loss(run_dir: Path) -> float | None:
    sums = stage_summaries(run_dir)
    if not sums or sums[-1]["val_end"] is None:
        return None
    v = float(sums[-1]["val_end"])
    return v if math.isfinite(v) else math.inf


def run_search(cfg: RunConfig, out_dir: Path, trials: int, budget: float | None = None, seed: int = 0,
               on_trial: Callable[[Trial], None] | None = None) -> list[Trial]:
    """Train every candidate (resuming unfinished ones) into out_dir/trials/<tag>; the results, best first
    once all are known, also go to out_dir/search.jsonl."""
    budget = budget or plan_flops(cfg)
    results: list[Trial] = []
    for choice in choices(cfg, trials, seed, budget):
        try:
            cand = candidate_config(cfg, choice, budget)
        except FlmError:  # e.g. a ramp longer than a very short stage: not a plan that can run
            continue
        trial = Trial(choice, [s.steps for s in resolve_stages(cand)], plan_flops(cand))
        run_dir = out_dir / "trials" / choice.tag
        trial.val_loss = final_val_loss(run_dir) if (run_dir / "report.md").is_file() else None
        if trial.val_loss is None:
            try:
                run_plan(cand, run_dir, resume=(run_dir / "config.toml").is_file())
            except FlmError as e:
                if "loss became" not in str(e):  # the trainer's divergence error; anything else is the user's
                    raise
            trial.val_loss = final_val_loss(run_dir)
            trial.val_loss = math.inf if trial.val_loss is None else trial.val_loss
        results.append(trial)
        if on_trial is not None:
            on_trial(trial)
    ranked = sorted(results, key=lambda t: t.val_loss if t.val_loss is not None else math.inf)
    atomic_write(out_dir / "search.jsonl", "".join(json.dumps(t.to_json()) + "\n" for t in ranked))
    return ranked


def save_best(cfg: RunConfig, best: Trial, budget: float, path: Path) -> RunConfig:
    """The winning plan as a config file ``path``."""
    plan = candidate_config(cfg, best.choice, budget)
    data = config_to_dict(plan)
    data["name"] = cfg.name
    out = config_from_dict(data, where="best plan")
    save_config(out, path)
    return out
