"""μP (Tensor Programs V) for FLM, done explicitly: init scales, optimizer parameter groups, multipliers.

μP is on when ``model.mup_base_width`` is set. The base model is the same architecture at
``d_model = attn_dim = B`` and ``d_ff = 4B`` (B = mup_base_width; the GPT-3/FLM shape, FLM-101B used
B = 256); every hyperparameter (lr, init_std, output_mult) means what it means on that base model.

Each parameter is classified by its name (so the rules survive FSDP2/DTensor, torch.compile,
activation-checkpoint wrappers, checkpoint round trips and growth: nothing lives on tensor attributes):

=============================  ====================  =========================  =====================
parameter                      init std              Adam LR                    AdamW weight decay
=============================  ====================  =========================  =====================
hidden matrices q, k, v, up    σ / √m_in             η / m_in                   λ · m_in
output projections o, down     σ / √m_in / √(2L)     η / m_in                   λ · m_in
tok_emb (input + tied readout) σ                     η                          λ
biases, LayerNorm gain/bias    0 / 1                 η                          0
=============================  ====================  =========================  =====================

- m_in = fan_in / base_fan_in per matrix: d_model / B for q, k, v, up; attn_dim / B for o; d_ff / 4B for
  down. For the usual shapes (attn_dim = d_model, d_ff = 4 d_model) all equal ``cfg.width_mult``, but a
  grown d_ff or head count changes only the matrices whose fan-in grew, as μP requires.
- Readout: logits = tok_emb.weight · (h · output_mult / width_mult), width_mult = d_model / B (mup's
  MuSharedReadout). The tied weight keeps a width-independent init and LR; the 1/width_mult multiplier
  gives its readout role the μP output scaling (effective init var ∝ 1/fan_in², Adam LR ∝ 1/fan_in).
- Attention logits q·k / d_head (``attn_scale = "linear"``). Width grows by adding heads at a fixed
  head_dim (``with_width``), so rotary/xPos frequencies and the attention scale stay the same at every
  width: rotary needs no further change. The query is not zero-initialised: with 1/d_head scaling the
  attention logits of a random init already vanish with width, so μP does not require it.
- Weight decay is scaled by m_in so that AdamW's decoupled decay lr·λ per step is width-independent
  (mup's MuAdamW). Adam eps is left alone (gradients in fp32 stay far above 1e-8 at these widths).
- ``input_mult`` (embedding output) and ``output_mult`` are width-independent hyperparameters, tuned at B.
- Without μP (standard parameterization, SP) every multiplier is 1: init σ (σ/√(2L) for o and down) at
  every width, one LR, and the attention scale 1/√d_head.

The trainer sets ``group["lr"] = schedule_lr * group["lr_scale"]`` every step, so the schedule scales μP
LRs instead of overwriting them. After growth, rebuild the groups from the grown model's config.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from flm.config import ModelConfig
from flm.errors import FlmError

# Matrix-like (hidden) weights: name suffix -> (ModelConfig attribute giving the fan-in, base fan-in / B).
_HIDDEN: dict[str, tuple[str, int]] = {
    "attn.q.weight": ("d_model", 1),
    "attn.k.weight": ("d_model", 1),
    "attn.v.weight": ("d_model", 1),
    "attn.o.weight": ("attn_dim", 1),
    "mlp.up.weight": ("d_model", 1),
    "mlp.down.weight": ("d_ff", 4),
}
_OUTPUT_PROJ = ("attn.o.weight", "mlp.down.weight")
# Wrappers that prefix parameter names: torch.compile, FSDP1, activation checkpointing, DDP.
_WRAPPER_PARTS = ("_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "module.")


def canonical_name(name: str) -> str:
    """The FLM parameter name without the prefixes that compile/FSDP1/checkpoint wrappers insert."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def param_kind(name: str) -> str:
    """'hidden', 'embedding' or 'vector' (biases and LayerNorm parameters)."""
    name = canonical_name(name)
    if name.endswith(tuple(_HIDDEN)):
        return "hidden"
    if name.endswith("tok_emb.weight"):
        return "embedding"
    if name.endswith((".bias", ".weight")):
        return "vector"
    raise FlmError(f"mup: parameter '{name}' is not part of the FLM model; μP has no rule for it")


def fan_in_mult(cfg: ModelConfig, name: str) -> float:
    """m_in = fan_in / base_fan_in of a hidden matrix (1.0 for other parameters and under SP)."""
    name = canonical_name(name)
    if not cfg.mup_base_width:
        return 1.0
    for suffix, (dim, base_factor) in _HIDDEN.items():
        if name.endswith(suffix):
            return getattr(cfg, dim) / (base_factor * cfg.mup_base_width)
    return 1.0


def init_std(cfg: ModelConfig, name: str) -> float:
    """Std of the normal init of a matrix parameter (q/k/v/o/up/down or the embedding)."""
    kind = param_kind(name)
    if kind == "embedding":
        return cfg.init_std
    if kind != "hidden":
        raise ValueError(f"{name} is not a matrix parameter")
    std = cfg.init_std / math.sqrt(fan_in_mult(cfg, name))
    if canonical_name(name).endswith(_OUTPUT_PROJ):
        std /= math.sqrt(2 * cfg.n_layers)
    return std


def lr_scale(cfg: ModelConfig, name: str) -> float:
    return 1.0 / fan_in_mult(cfg, name) if param_kind(name) == "hidden" else 1.0


def weight_decay_scale(cfg: ModelConfig, name: str) -> float:
    kind = param_kind(name)
    if kind == "vector":
        return 0.0
    return fan_in_mult(cfg, name) if kind == "hidden" else 1.0


@torch.no_grad()
def init_weights(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Initialise an FLM in place by the rules above: N(0, init_std(name)) matrices, zero biases,
    unit LayerNorm gains."""
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    for name, p in model.named_parameters():
        kind = param_kind(name)
        if kind == "vector":
            p.fill_(1.0 if name.endswith(".weight") else 0.0)  # the only 1-D weights are LayerNorm gains
        else:
            p.normal_(0.0, init_std(cfg, name), generator=generator)


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups. Each carries ``lr_scale`` (its LR relative to the schedule's LR) and ``names``;
    hidden matrices get LR η/m_in and decay λ·m_in, 1-D parameters no decay.

    Computed from parameter names and the model's config only, so it gives the same groups on a plain,
    compiled or FSDP2-sharded model, and the grown model's groups follow its new shape."""
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    buckets: dict[tuple[float, float], tuple[list[nn.Parameter], list[str]]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (lr_scale(cfg, name), weight_decay * weight_decay_scale(cfg, name))
        params, names = buckets.setdefault(key, ([], []))
        params.append(p)
        names.append(name)
    return [
        {"params": ps, "lr": lr * scale, "lr_scale": scale, "weight_decay": wd, "names": names}
        for (scale, wd), (ps, names) in buckets.items()
    ]


def rules_table(cfg: ModelConfig) -> list[dict[str, Any]]:
    """One row per distinct parameter of one block plus the embedding: fan-in multiplier, init std,
    LR scale, weight-decay scale (what `flm mup coord-check` prints and the tests check)."""
    names = ["tok_emb.weight", *(f"blocks.0.{s}" for s in _HIDDEN), "blocks.0.attn.q.bias", "ln_f.weight"]
    rows = []
    for name in names:
        kind = param_kind(name)
        rows.append(
            {
                "param": name,
                "kind": kind,
                "fan_in_mult": fan_in_mult(cfg, name),
                "init_std": init_std(cfg, name) if kind != "vector" else None,
                "lr_scale": lr_scale(cfg, name),
                "wd_scale": weight_decay_scale(cfg, name),
            }
        )
    return rows


# ----- width series ---------------------------------------------------------------------------------


def with_width(cfg: ModelConfig, width: int, *, mup: bool = True) -> ModelConfig:
    """The same model at d_model = ``width``: heads added at a fixed head_dim, d_ff scaled with d_model,
    everything else (depth, vocab, hyperparameters, μP base width) kept. ``mup=False`` gives the standard
    parameterization (no base width, 1/√d_head attention)."""
    hd = cfg.head_dim
    assert hd is not None and cfg.d_ff is not None
    if width % hd:
        raise FlmError(
            f"width {width} is not a multiple of model.head_dim ({hd}): widths grow by adding heads of a "
            f"fixed size; pick widths that are multiples of {hd} or set model.head_dim"
        )
    data = cfg.model_dump()
    data.update(d_model=width, n_heads=width // hd, head_dim=hd, d_ff=round(cfg.d_ff * width / cfg.d_model))
    if not mup:
        data.update(mup_base_width=None, attn_scale="sqrt")
    elif not cfg.mup_base_width:
        raise FlmError(
            "μP needs model.mup_base_width (the width the hyperparameters were tuned at, e.g. 256)"
        )
    return ModelConfig.model_validate(data)
