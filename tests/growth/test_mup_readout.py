"""μP width growth through the whole ramp: the readout multiplier output_mult / width_mult stays the old
width's (grow.readout = "keep"), so the grown μP model computes at every m exactly what a growth without any
width-dependent multiplier computes from the same weights: the old sub-network's logits are never rescaled.
grow.readout = "mup" moves it to the new width's over the ramp, which rescales them (the old behaviour)."""

from __future__ import annotations

import pytest
import torch

from flm.config import GrowthConfig
from flm.growth import grow
from flm.model import FLM

from ._util import generic_model, grown_model, mup_tiny, tiny, tokens

SPEC = GrowthConfig(d_model=80, d_ff=200, ramp_steps=4)  # width 32 -> 80 (heads 4 -> 10): readout x 32/80 under μP


def _plain_twin(cfg) -> FLM:
    """The same network without μP: no base width, so no width-dependent readout; output_mult set to the μP
    model's readout multiplier and the same 1/d_head attention, so both compute the same function."""
    twin = tiny(xpos=cfg.xpos, xpos_scale_base=cfg.xpos_scale_base, input_mult=cfg.input_mult,
                output_mult=cfg.output_mult / cfg.width_mult, attn_scale=cfg.attn_scale)
    return FLM(twin).eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() <= 1e-5 * b.abs().max().item()


@torch.no_grad()
def test_mup_width_growth_keeps_the_old_logits_scale_at_every_m():
    cfg = mup_tiny()
    model = generic_model(cfg)
    twin = _plain_twin(cfg)
    twin.load_state_dict(model.state_dict())
    x = tokens(cfg)
    before = model(x)
    assert _close(twin(x), before)

    res = grow(cfg, model.state_dict(), SPEC, seed=3)
    assert res.cfg.output_mult / res.cfg.width_mult == pytest.approx(cfg.output_mult / cfg.width_mult, rel=1e-12)
    twin_res = grow(twin.cfg, twin.state_dict(), SPEC, seed=3)
    grown, twin_grown = grown_model(res), grown_model(twin_res)
    twin_grown.load_state_dict(res.state_dict)  # the same new entries (the μP init differs in scale only)
    for m in (0.0, 0.5, 1.0):
        grown.set_mask_value(m)
        twin_grown.set_mask_value(m)
        out = grown(x)
        assert _close(out, twin_grown(x)), m
        if m == 0.0:
            assert _close(out, before)  # the grown model is the old one
    moved = (grown(x) - before).abs().max().item()
    assert moved > 1e-3  # at m = 1 the new units do change the function: the comparison above is not vacuous
    grown.end_growth()
    twin_grown.end_growth()
    assert _close(grown(x), twin_grown(x))  # the plain grown model: the same readout multiplier


@torch.no_grad()
def test_readout_mup_moves_the_multiplier_and_rescales_the_old_logits():
    cfg = mup_tiny()
    model = generic_model(cfg)
    x = tokens(cfg)
    keep = grown_model(grow(cfg, model.state_dict(), SPEC, seed=3))
    moving = grown_model(grow(cfg, model.state_dict(), SPEC.model_copy(update={"readout": "mup"}), seed=3))
    assert moving.cfg.output_mult == cfg.output_mult
    for m in (0.0, 0.5, 1.0):
        keep.set_mask_value(m)
        moving.set_mask_value(m)
        ratio = 1 + m * (32 / 80 - 1)  # the multiplier, relative to the old width's
        assert _close(moving(x), keep(x) * ratio), m
