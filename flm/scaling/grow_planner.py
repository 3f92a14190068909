"""Growth plans from a loss model (``flm plan grow``): which stage shapes, and when to grow, under a FLOP budget.

The model of a grown run (docs/growth.md#the-planner): growth preserves the function, so right after it the
bigger shape has the loss the smaller one had, plus the growth kind's measured bump. From there it follows the
bigger shape's curve L(N', ·) of the loss model as if it had trained from scratch on D' tokens, the D' with
L(N', D') = loss at growth (the "effective tokens"). A stage's loss then falls at ``-∂L/∂D / c`` per FLOP (c:
FLOPs per token of its shape), and the final loss is lowest when each growth happens where the current shape's
rate falls to the next one's: before, staying gains more per FLOP; after, growing would have (the derivative
of the final loss in the growth point has the sign of rate_next - rate_current). Under the Chinchilla form
that point has a closed form (``crossing_tokens``).

Candidate shapes are chains from the start shape to the final one through intermediate shapes that flm's
growth operators reach (width with its heads, FFN, depth; each at its start, final or geometric-middle size);
every chain with 2..K stages is simulated and the one with the lowest predicted final loss wins.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import ValidationError
from scipy.optimize import minimize_scalar

from flm.config import GrowthConfig, ModelConfig, RunConfig, config_from_dict, config_to_dict
from flm.errors import FlmError
from flm.flops import flops_per_token
from flm.scaling.loss_model import LossModel
from flm.scaling.predict import n_params
from flm.stages import grow_shape, resolve_stages
from flm.train.schedule import stage_lrs

GROW_KEYS = ("d_model", "d_ff", "n_heads", "n_layers")
# Smaller first stages tried by the planner and `flm plan search`: the start's width (whole heads of its
# head_dim) and depth times these factors; (1, 1) is the start as given.
START_WIDTHS = (1.0, 0.75, 0.5)
START_DEPTHS = (1.0, 0.5)


@dataclass(frozen=True)
class Shape:
    """One stage's shape as the planner sees it: N (the loss model's count), FLOPs per token, and the bump
    of growing into it (0 for the first)."""

    n: float
    cost: float
    bump: float = 0.0
    model: ModelConfig | None = None
    kinds: tuple[str, ...] = ()


@dataclass
class Segment:
    """What one stage trains: effective tokens on its own curve from ``d_start`` to ``d_end``."""

    shape: Shape
    d_start: float
    d_end: float
    flops_start: float
    loss_start: float  # right after the growth (bump included)
    loss_end: float

    @property
    def tokens(self) -> float:
        return self.d_end - self.d_start

    @property
    def flops_end(self) -> float:
        return self.flops_start + self.tokens * self.shape.cost


def rate(law: LossModel, shape: Shape, d: float) -> float:
    """Loss decrease per FLOP of ``shape`` at effective tokens ``d``."""
    return -law.dloss_dtokens(shape.n, d) / shape.cost


def tokens_after_growth(law: LossModel, loss: float, nxt: Shape) -> float:
    """The effective tokens of ``nxt`` right after growing into it at ``loss`` (0 if the bump takes it above
    any loss the curve has: a curve starts at infinite loss, so this happens only for a negative gap)."""
    d = law.tokens_for_loss(nxt.n, loss + nxt.bump)
    return 0.0 if not math.isfinite(d) else d


def crossing_tokens(law: LossModel, cur: Shape, nxt: Shape) -> float:
    """The effective tokens of ``cur`` at which its rate equals ``nxt``'s after growing; 0 when growing at
    once is better, inf when it never is. From rate_cur(D) = rate_next(D'): (D'/D)^(β+1) = c/c', and
    B/D'^β = B/D^β + gap with gap = A/N^α - A/N'^α + bump."""
    gap = law.A / cur.n**law.alpha - law.A / nxt.n**law.alpha + nxt.bump
    if nxt.cost <= cur.cost:  # the next shape is no dearer per token: it gains at least as much per FLOP
        return 0.0
    if gap <= 0:
        return 0.0
    rho = (cur.cost / nxt.cost) ** (1.0 / (law.beta + 1.0))
    return (law.B * (rho**-law.beta - 1.0) / gap) ** (1.0 / law.beta)


def simulate(law: LossModel, shapes: Sequence[Shape], budget: float) -> list[Segment]:
    """Train the chain ``shapes`` for ``budget`` FLOPs, growing into the next shape where the rates cross;
    stops early (fewer segments) when the budget ends first. A stage the rule leaves empty is skipped."""
    segs: list[Segment] = []
    d, spent, loss = 0.0, 0.0, math.inf
    for i, shape in enumerate(shapes):
        if i:
            d = tokens_after_growth(law, loss, shape)
            loss = float(law(shape.n, d)) if d > 0 else math.inf
        start, start_loss, start_flops = d, loss, spent
        end = d + (budget - spent) / shape.cost
        if i + 1 < len(shapes):
            end = min(end, max(d, crossing_tokens(law, shape, shapes[i + 1])))
        spent += (end - d) * shape.cost
        d = end
        loss = float(law(shape.n, d)) if d > 0 else math.inf
        if end > start:
            segs.append(Segment(shape, start, end, start_flops, start_loss, loss))
        if spent >= budget * (1 - 1e-12):
            break
    return segs


def predicted_curve(law: LossModel, segs: Sequence[Segment], points: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(FLOPs, loss) along the plan."""
    fl, lo = [], []
    for s in segs:
        d = np.geomspace(max(s.d_start, s.tokens * 1e-3), s.d_end, points)
        fl.append(s.flops_start + (d - s.d_start) * s.shape.cost)
        lo.append(law(s.shape.n, d))
    return np.concatenate(fl), np.concatenate(lo)


def best_scratch(law: LossModel, budget: float, cost: Callable[[float], float], n_lo: float, n_hi: float
                 ) -> tuple[float, float, float]:
    """(N, D, loss) of the best from-scratch model for ``budget`` FLOPs: min over N in [n_lo, n_hi] of
    L(N, budget / cost(N)), ``cost(N)`` the FLOPs per token of a model of N parameters."""

    def loss(log_n: float) -> float:
        n = math.exp(log_n)
        return float(law(n, budget / cost(n)))

    res = minimize_scalar(loss, bounds=(math.log(n_lo), math.log(n_hi)), method="bounded",
                          options={"xatol": 1e-6})
    n = math.exp(res.x)
    return n, budget / cost(n), float(res.fun)


# ----- shapes flm can grow through ---------------------------------------------------------------------


def parse_shape(text: str, start: ModelConfig) -> ModelConfig:
    """``d_model=256,n_layers=8,...`` grown from ``start`` by flm's growth rules; one line if it cannot be."""
    spec: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in GROW_KEYS or not value.strip().isdigit():
            raise FlmError(f"--final {text!r}: '{part}' is not KEY=INT with KEY one of {', '.join(GROW_KEYS)}; "
                           "e.g. --final d_model=256,n_layers=8")
        spec[key] = int(value)
    model = grow(start, spec, "--final")
    if model.shape() == start.shape():
        raise FlmError(f"--final {text!r} is the start shape: nothing to grow; give a larger final shape")
    return model


def grow(model: ModelConfig, spec: dict[str, int], where: str) -> ModelConfig:
    try:
        return grow_shape(GrowthConfig(**spec), model, where=where)
    except ValidationError as e:
        err = e.errors()[0]
        raise FlmError(f"{where}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def growth_spec(old: ModelConfig, new: ModelConfig) -> dict[str, int]:
    return {k: getattr(new, k) for k in GROW_KEYS if getattr(new, k) != getattr(old, k)}


def growth_kinds(old: ModelConfig, new: ModelConfig) -> tuple[str, ...]:
    """Which of flm's growth operators take ``old`` to ``new``: width (with its heads and FFN), ffn, heads, depth."""
    spec = growth_spec(old, new)
    kinds = ["width"] if "d_model" in spec else [k for k, key in (("ffn", "d_ff"), ("heads", "n_heads")) if key in spec]
    return tuple(kinds + (["depth"] if "n_layers" in spec else []))


def start_shapes(model: ModelConfig, readout: str = "keep") -> list[ModelConfig]:
    """``model`` and the smaller first stages that grow back into it: its heads times ``START_WIDTHS``, rounded
    down to whole heads of its head_dim (the width and FFN in proportion; only when the heads follow the width),
    and its layers times ``START_DEPTHS``, rounded down. Under μP with ``readout`` "keep" a narrower start's
    output_mult is scaled down, so that the growth scales it back up to the given one. A start flm's growth
    rules cannot grow from is left out."""
    hd = model.head_dim or 1
    out, seen = [model], {tuple(model.shape().values())}
    for fw, fd in itertools.product(START_WIDTHS, START_DEPTHS):
        update: dict[str, float | int] = {}
        if fw != 1.0 and model.attn_dim == model.d_model:
            d = math.floor(model.d_model * fw / hd) * hd
            if hd <= d < model.d_model:
                update.update(d_model=d, n_heads=d // hd, d_ff=max(1, round(model.d_ff * d / model.d_model)))  # type: ignore[operator]
                if model.mup_base_width and readout == "keep":
                    update["output_mult"] = model.output_mult * d / model.d_model
        if fd != 1.0 and 1 <= math.floor(model.n_layers * fd) < model.n_layers:
            update["n_layers"] = math.floor(model.n_layers * fd)
        if not update:
            continue
        try:
            small = ModelConfig.model_validate({**model.model_dump(), **update})
            back = grow(small, growth_spec(small, model), "smaller start")
        except (FlmError, ValidationError):
            continue
        key = tuple(small.shape().values())
        if back.shape() == model.shape() and key not in seen:
            seen.add(key)
            out.append(small)
    return out


def _middle(a: int, b: int, multiple: int) -> list[int]:
    """{a, b} and their geometric middle rounded to ``multiple`` (when it falls strictly between)."""
    mid = int(round(math.sqrt(a * b) / multiple)) * multiple
    return sorted({a, b} | ({mid} if a < mid < b else set()))


def candidate_chains(start: ModelConfig, final: ModelConfig, stages: int, via: Sequence[ModelConfig] = ()
                     ) -> list[list[ModelConfig]]:
    """Every chain start -> ... -> final of 2..``stages`` shapes, each growing out of the one before through
    intermediate shapes (width and depth at their start, final or middle size; the FFN following the width
    when start and final share the FFN ratio; and the shapes of ``via``), that flm's growth rules accept."""
    hd = start.head_dim or 1
    tied = start.d_ff * final.d_model == final.d_ff * start.d_model  # type: ignore[operator]
    mids: list[ModelConfig] = []
    ffns = [0] if tied else _middle(start.d_ff, final.d_ff, 8)  # type: ignore[arg-type]
    for d, f, n in itertools.product(_middle(start.d_model, final.d_model, hd), ffns,
                                     _middle(start.n_layers, final.n_layers, 1)):
        f = d * start.d_ff // start.d_model if tied else f  # type: ignore[operator]
        try:
            m = grow(start, {"d_model": d, "d_ff": f, "n_layers": n}, "intermediate shape")
        except FlmError:
            continue
        if m.shape() not in (start.shape(), final.shape()):
            mids.append(m)
    known = [m.shape() for m in mids]
    mids += [m for m in via if m.shape() not in (*known, start.shape(), final.shape())]
    chains = []
    for k in range(0, stages - 1):
        for middle in itertools.permutations(mids, k):
            chain = [start, *middle, final]
            try:
                steps = [grow(a, growth_spec(a, b), "chain") for a, b in zip(chain, chain[1:])]
            except FlmError:
                continue
            if all(s.shape() == b.shape() for s, b in zip(steps, chain[1:])) and all(
                    growth_spec(a, b) for a, b in zip(chain, chain[1:])):
                chains.append(chain)
    return chains


@dataclass
class GrowPlan:
    segments: list[Segment]
    budget: float
    final_loss: float
    chain: list[ModelConfig]
    scratch: dict[str, float] = field(default_factory=dict)

    @property
    def reaches_final(self) -> bool:
        return self.segments[-1].shape.model == self.chain[-1]


def chain_shapes(law: LossModel, chain: Sequence[ModelConfig], seq: int) -> list[Shape]:
    """The planner's view of a chain of models: N, FLOPs per token, and the bump of each growth's kinds."""
    shapes = [Shape(n_params(chain[0], law.count), flops_per_token(chain[0], seq), 0.0, chain[0])]
    for a, b in zip(chain, chain[1:]):
        kinds = growth_kinds(a, b)
        shapes.append(Shape(n_params(b, law.count), flops_per_token(b, seq),
                            sum(law.bumps.get(k, 0.0) for k in kinds), b, kinds))
    return shapes


def plan_growth(law: LossModel, cfg: RunConfig, final: ModelConfig, budget: float, stages: int,
                smaller_starts: bool = True) -> GrowPlan:
    """The chain (of at most ``stages`` shapes to ``final``) with the lowest predicted final loss for
    ``budget`` model FLOPs, each growth where the rates cross. It starts at cfg.model or, with
    ``smaller_starts``, at one of ``start_shapes(cfg.model)`` (then possibly through cfg.model), which wins
    only when its predicted final loss is strictly lower."""
    if not 2 <= stages <= 5:
        raise FlmError(f"--stages {stages}: give 2 to 5 (the chains to compare grow exponentially with it)")
    seq, per_step = cfg.seq_len, cfg.train.batch_size * cfg.seq_len
    one_step = per_step * flops_per_token(cfg.model, seq)
    if not budget >= one_step:
        raise FlmError(f"--budget {budget:.3g} FLOPs is below one step of the start shape ({one_step:.3g} FLOPs: "
                       f"{per_step} tokens x {flops_per_token(cfg.model, seq):.3g} FLOPs per token); give more")
    best: GrowPlan | None = None
    starts = start_shapes(cfg.model) if smaller_starts else [cfg.model]
    for start in starts:
        via = [cfg.model] if start is not cfg.model else []
        for chain in candidate_chains(start, final, stages, via):
            segs = simulate(law, chain_shapes(law, chain, seq), budget)
            # strictly lower, by more than rounding: a smaller start that is grown at once ties the given one
            if best is None or segs[-1].loss_end < best.final_loss - 1e-9 * abs(best.final_loss):
                best = GrowPlan(segs, budget, segs[-1].loss_end, chain)
    if best is None:
        raise FlmError(f"no chain of flm's growth operators leads from {cfg.model.shape()} to {final.shape()}; "
                       "pick a final shape whose width is a multiple of head_dim and no dimension shrinks")
    return best


def scratch_family(final: ModelConfig, seq: int, count: str) -> list[tuple[float, float, ModelConfig]]:
    """(N, FLOPs per token, model) of the final shape's depth at widths of 1/8..4x its width (heads of its
    head_dim): the from-scratch models the plan is compared with."""
    hd = final.head_dim or 1
    out = []
    for w in sorted({max(hd, int(round(final.d_model * f / hd)) * hd) for f in np.geomspace(0.125, 4, 25)}):
        m = final.model_copy(update={"d_model": w, "n_heads": w // hd, "d_ff": w * final.d_ff // final.d_model})
        m = ModelConfig.model_validate(m.model_dump())
        out.append((float(n_params(m, count)), flops_per_token(m, seq), m))
    return out


def best_scratch_of(law: LossModel, budget: float, family: list[tuple[float, float, ModelConfig]]
                    ) -> dict[str, float]:
    """The best from-scratch model of ``family`` for ``budget`` (continuous optimum over N, FLOPs per token
    interpolated log-log, and the nearest trainable width)."""
    ns, cs = np.log([f[0] for f in family]), np.log([f[1] for f in family])
    n, d, loss = best_scratch(law, budget, lambda x: float(np.exp(np.interp(math.log(x), ns, cs))),
                              float(np.exp(ns[0])), float(np.exp(ns[-1])))
    losses = [float(law(nn, budget / c)) for nn, c, _ in family]
    i = int(np.argmin(losses))
    return {"n": n, "tokens": d, "loss": loss, "width": family[i][2].d_model, "width_n": family[i][0],
            "width_loss": losses[i]}


def kept_segments(cfg: RunConfig, plan: GrowPlan) -> list[Segment]:
    """The segments that become stages: those of at least one whole step (a shorter one is grown through)."""
    per_step = cfg.train.batch_size * cfg.seq_len
    return [s for s in plan.segments if round(s.tokens / per_step) >= 1] or plan.segments[:1]


def plan_config(cfg: RunConfig, plan: GrowPlan, ramp_share: float = 0.25) -> RunConfig:
    """``cfg`` with the plan's stages (steps from tokens, whole steps, at least 1; ramps ``ramp_share`` of
    their stage), one LR schedule across them (lr_mode inherit, horizon the plan's length)."""
    per_step = cfg.train.batch_size * cfg.seq_len
    kept = kept_segments(cfg, plan)
    data = config_to_dict(cfg)
    first = kept[0].shape.model
    assert first is not None
    data["model"] = config_to_dict(first)
    data["lr_mode"] = "inherit"
    data["optim"].pop("decay_steps", None)
    stages: list[dict] = []
    prev = first
    for s in kept:
        steps = max(1, round(s.tokens / per_step))
        entry: dict = {"steps": steps}
        assert s.shape.model is not None
        if stages:
            entry["grow"] = growth_spec(prev, s.shape.model) | {"ramp_steps": max(1, round(ramp_share * steps))}
        stages.append(entry)
        prev = s.shape.model
    data["stages"] = stages
    out = config_from_dict(data, where="planned config")
    resolve_stages(out)  # refuses a plan that cannot run (e.g. a warmup longer than the whole plan)
    return out


def growth_lrs(cfg: RunConfig) -> list[float]:
    """The LR each stage of a plan config starts at (the cosine continues across growths)."""
    return [lr.first for lr in stage_lrs(cfg, resolve_stages(cfg))]
