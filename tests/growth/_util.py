"""Shared helpers for the growth tests: tiny configs, perturbed models, logits before/after growth."""

from __future__ import annotations

import torch
from torch import Tensor

from flm.config import GrowthConfig, ModelConfig
from flm.growth import GrowthResult, grow
from flm.model import FLM

TOL = 1e-5


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=300, d_model=32, n_heads=4, n_layers=2, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


def mup_tiny(**kw) -> ModelConfig:
    """μP on (readout multiplier, 1/d_head attention, fan-in init), xPos on, tied embedding (always)."""
    base = dict(mup_base_width=16, output_mult=2.0, input_mult=1.5, xpos=True, xpos_scale_base=16.0)
    base.update(kw)
    return tiny(**base)


def generic_model(cfg: ModelConfig, seed: int = 0) -> FLM:
    """A model whose biases and LayerNorms are not at their init, so nothing passes by accident."""
    torch.manual_seed(seed)
    model = FLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.ndim == 1 else 0.05))
    return model


def scramble_new_entries(res: GrowthResult, old_state: dict[str, Tensor], seed: int = 1) -> None:
    """Overwrite every new entry (outside the old corner, and whole new blocks) with N(0, 1) noise, in place:
    MSG must preserve the function whatever the new weights are."""
    gen = torch.Generator().manual_seed(seed)
    for tp in res.plan.tensors:
        t = res.state_dict[tp.name]
        noise = torch.randn(t.shape, generator=gen)
        if tp.new_param or tp.source is None:
            res.state_dict[tp.name] = noise
            continue
        old = old_state[tp.source]
        corner = tuple(slice(0, s) for s in old.shape)
        noise[corner] = old
        res.state_dict[tp.name] = noise


def grown_model(res: GrowthResult) -> FLM:
    model = FLM(res.cfg).eval()
    model.load_state_dict(res.state_dict, strict=True)
    model.load_growth_state(res.mask_state)
    return model


def tokens(cfg: ModelConfig, batch: int = 2, seq: int = 24, seed: int = 0) -> Tensor:
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def max_delta(cfg: ModelConfig, growth: GrowthConfig, scramble: bool = True, seed: int = 0) -> float:
    """Largest |Δlogit| between a generic model and its growth (masks at m = 0) on random tokens."""
    model = generic_model(cfg, seed)
    x = tokens(cfg, seed=seed)
    ref = model(x)
    state = model.state_dict()
    res = grow(cfg, state, growth, seed=seed + 1)
    if scramble:
        scramble_new_entries(res, state, seed)
    return (grown_model(res)(x) - ref).abs().max().item()
