"""What a growth does, tensor by tensor, decided from the configs alone (no tensors touched).

Every MSG operator on FLM is "copy the old tensor into the top-left corner of a bigger one, initialise the
rest": width grows the d_model axes, heads the attention axes (new heads sit after the old ones), FFN the
d_ff axes. Depth adds whole blocks, each a copy of an old (grown) block or random. So a growth is a list of
``TensorPlan``s, which the in-memory operators (ops.py) and the streaming checkpoint grower (growth/offline.py)
both execute, one tensor at a time, with the same per-tensor random streams.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from flm import mup
from flm.config import GrowthConfig, ModelConfig
from flm.errors import FlmError
from flm.stages import grow_shape

BLOCK_PREFIX = "blocks."


@dataclass(frozen=True)
class Init:
    """How the new entries of a tensor start: N(0, std) when ``std`` is set, else the constant ``value``."""

    std: float | None = None
    value: float = 0.0


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    source: str | None  # old tensor copied into the top-left corner (None: all entries new)
    init: Init  # the entries outside that corner
    new_param: bool  # True for new blocks: their optimizer moments start at zero, even when copied


@dataclass
class GrowthPlan:
    old: ModelConfig
    new: ModelConfig
    growth: GrowthConfig
    tensors: list[TensorPlan]
    layer_source: list[int | None]  # per new block: the old block it is (or None for a new block)
    copy_source: dict[int, int | None] = field(default_factory=dict)  # new block -> old block it copies

    @property
    def new_layers(self) -> list[int]:
        return [i for i, s in enumerate(self.layer_source) if s is None]

    def mask_state(self) -> dict[str, torch.Tensor]:
        """What ``FLM.load_growth_state`` takes, at m = 0 (the grown model computes the old function)."""
        old, new = self.old, self.new
        state: dict[str, torch.Tensor] = {"grow_m": torch.zeros(())}
        if new.d_model > old.d_model:
            state["hidden_new"] = torch.arange(new.d_model) >= old.d_model
        before, after = old.output_mult / old.width_mult, new.output_mult / new.width_mult
        if not math.isclose(before, after, rel_tol=1e-12):  # grow.readout = "mup": moves over the ramp
            state["readout_mult_from"] = torch.tensor(before, dtype=torch.float64)
        for i, src in enumerate(self.layer_source):
            if src is not None and src != i and new.scale_attn_by_inverse_layer_idx:
                state[f"blocks.{i}.layer_from"] = torch.tensor(src)  # keeps its old attention factor at m = 0
            if src is None:
                state[f"blocks.{i}.depth_new"] = torch.tensor(True)
                continue  # a new block ramps in as a whole; its heads and units need no masks of their own
            if new.n_heads > old.n_heads:
                state[f"blocks.{i}.head_new"] = torch.arange(new.n_heads) >= old.n_heads
            if new.d_ff > old.d_ff:  # type: ignore[operator]
                state[f"blocks.{i}.ffn_new"] = torch.arange(new.d_ff) >= old.d_ff  # type: ignore[operator]
        return state


    def carried_steps(self, step: int, param_steps: Mapping[str, int] | None = None) -> dict[str, int]:
        """AdamW step counts of the grown model that differ from ``step`` (optim.json's "param_steps"), from
        the old model's (``param_steps``: those that differ from its ``step``). An old tensor keeps its count
        under its new name (widened ones too: one count per tensor, the old slice's); a new block's tensors
        get no state at all, so AdamW starts them at step 0, as a fresh optimizer would."""
        old = param_steps or {}
        return {
            tp.name: old[tp.source] for tp in self.tensors
            if not tp.new_param and tp.source is not None and tp.source in old and old[tp.source] != step
        }


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``FLM(cfg).state_dict()``, in its order, without building the model."""
    d, a, f = cfg.d_model, cfg.attn_dim, cfg.d_ff
    assert f is not None
    out: dict[str, tuple[int, ...]] = {"tok_emb.weight": (cfg.padded_vocab_size, d)}
    for i in range(cfg.n_layers):
        p = f"{BLOCK_PREFIX}{i}."
        out[p + "ln1.weight"], out[p + "ln1.bias"] = (d,), (d,)
        for proj in ("q", "k", "v"):
            out[f"{p}attn.{proj}.weight"], out[f"{p}attn.{proj}.bias"] = (a, d), (a,)
        out[p + "attn.o.weight"], out[p + "attn.o.bias"] = (d, a), (d,)
        out[p + "ln2.weight"], out[p + "ln2.bias"] = (d,), (d,)
        out[p + "mlp.up.weight"], out[p + "mlp.up.bias"] = (f, d), (f,)
        out[p + "mlp.down.weight"], out[p + "mlp.down.bias"] = (d, f), (d,)
    out["ln_f.weight"], out["ln_f.bias"] = (d,), (d,)
    return out


def init_for(name: str, cfg: ModelConfig) -> Init:
    """The muP init of ``cfg`` for one tensor, as ``FLM.init_weights`` (flm.mup) does it."""
    if mup.param_kind(name) == "vector":  # biases 0, LayerNorm gains 1
        return Init(value=1.0 if name.endswith(".weight") else 0.0)
    return Init(std=mup.init_std(cfg, name))


def layer_layout(old_layers: int, growth: GrowthConfig, new_layers: int) -> list[int | None]:
    """For each block of the grown model: the old block it is, or None where a new block goes."""
    k = new_layers - old_layers
    pos = growth.depth_position
    if k == 0:
        if isinstance(pos, list) and pos:
            raise FlmError(
                f"grow.depth_position lists {len(pos)} positions but n_layers does not grow; "
                "drop depth_position or raise n_layers"
            )
        return list(range(old_layers))
    if pos == "top":
        new_at = set(range(old_layers, new_layers))
    elif pos == "interleave":
        # after old block i go floor((i+1) k / L) - floor(i k / L) new ones: evenly spread, one on top
        layout: list[int | None] = []
        for i in range(old_layers):
            layout.append(i)
            layout.extend([None] * ((i + 1) * k // old_layers - i * k // old_layers))
        return layout
    else:
        if len(pos) != k or len(set(pos)) != k or any(p < 0 or p >= new_layers for p in pos):
            raise FlmError(
                f"grow.depth_position = {pos}: need {k} distinct block indices in [0, {new_layers}) for "
                f"n_layers {old_layers} -> {new_layers}; list where each new block sits in the grown model"
            )
        new_at = set(pos)
    olds = iter(range(old_layers))
    return [None if i in new_at else next(olds) for i in range(new_layers)]


def copy_sources(layout: list[int | None], growth: GrowthConfig, old_layers: int) -> dict[int, int | None]:
    """New block -> the old block it starts as a copy of (None: random init)."""
    if growth.depth_copy_from is not None and growth.depth_copy_from >= old_layers:
        raise FlmError(
            f"grow.depth_copy_from = {growth.depth_copy_from} but the model has only {old_layers} layers; "
            f"pick a layer in [0, {old_layers - 1}]"
        )
    out: dict[int, int | None] = {}
    for i, src in enumerate(layout):
        if src is not None:
            continue
        if growth.depth_init == "random":
            out[i] = None
        elif growth.depth_copy_from is not None:
            out[i] = growth.depth_copy_from
        else:  # the nearest old block below, or above when the new block is at the bottom
            below = [s for s in layout[:i] if s is not None]
            above = [s for s in layout[i:] if s is not None]
            out[i] = below[-1] if below else above[0]
    return out


def make_plan(old: ModelConfig, growth: GrowthConfig) -> GrowthPlan:
    """Every tensor of the grown model, in ``FLM(new).state_dict()`` order: where its top-left corner comes
    from and how the rest starts. Decided from the configs alone, so the in-memory operators, the streaming
    checkpoint grower and each rank's shard builder all follow the same plan."""
    new = grow_shape(growth, old)
    # which old block each new block is (None: a new block), and which old block a new one copies
    layout = layer_layout(old.n_layers, growth, new.n_layers)
    copies = copy_sources(layout, growth, old.n_layers)
    tensors: list[TensorPlan] = []
    for name, shape in param_shapes(new).items():
        init = init_for(name, new)  # the new entries start as the new width's muP init
        source: str | None = name
        new_param = False
        if name.startswith(BLOCK_PREFIX):
            idx, rest = name[len(BLOCK_PREFIX) :].split(".", 1)
            src = layout[int(idx)]
            if src is None:
                # a new block: a copy of an old block (or random); its optimizer state starts empty, so
                # AdamW treats it as fresh parameters even when its values are copied
                new_param = True
                copy = copies[int(idx)]
                source = None if copy is None else f"{BLOCK_PREFIX}{copy}.{rest}"
            else:  # an old block, renumbered when new blocks go between the old ones
                source = f"{BLOCK_PREFIX}{src}.{rest}"
        tensors.append(TensorPlan(name, shape, source, init, new_param))
    return GrowthPlan(old, new, growth, tensors, layout, copies)
