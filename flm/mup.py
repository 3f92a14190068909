"""muP (Tensor Programs V) for FLM, done explicitly: optimizer parameter groups and multipliers.

Rules (Adam): hidden matrix weights get init variance and LR scaled by 1/width_mult; the readout
multiplier is output_mult / width_mult (model.readout_mult); attention scale 1/d_head; embeddings, biases
and LayerNorms are width-independent. width_mult = d_model / mup_base_width (1.0 without muP), so a grown
model follows the rules of its new width as soon as its groups are rebuilt from its new config.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups. Each carries ``lr_scale`` (LR relative to the schedule's LR); no decay on 1-D params
    (biases, LayerNorm)."""
    width_mult = model.cfg.width_mult  # type: ignore[attr-defined]
    buckets: dict[tuple[float, float], list[nn.Parameter]] = {}
    names: dict[tuple[float, float], list[str]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        hidden = p.ndim == 2 and not name.endswith("tok_emb.weight")
        key = (1.0 / width_mult if hidden else 1.0, weight_decay if p.ndim >= 2 else 0.0)
        buckets.setdefault(key, []).append(p)
        names.setdefault(key, []).append(name)
    return [
        {"params": ps, "lr": lr * scale, "lr_scale": scale, "weight_decay": wd, "names": names[(scale, wd)]}
        for (scale, wd), ps in buckets.items()
    ]
