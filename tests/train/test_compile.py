"""train.compile: per-block torch.compile trains the same model as eager."""

from __future__ import annotations

import pytest
import torch

from flm.config import config_from_dict
from flm.train.loop import train_stage
from flm.train.metrics import read_metrics


def test_compiled_blocks_train_like_eager(tiny_cfg, tmp_path):
    pytest.importorskip("torch._inductor")
    losses = {}
    for compiled in (False, True):
        cfg = config_from_dict(tiny_cfg(steps=4, eval_every=2, compile=compiled))
        train_stage(cfg, tmp_path / str(compiled))
        rows = read_metrics(tmp_path / str(compiled) / "metrics.jsonl")
        losses[compiled] = [r["loss"] for r in rows] + [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(losses[True]) == 6
    # inductor reorders fp32 reductions: equal to rounding, not bitwise
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-4, atol=1e-5)


def test_compiled_blocks_follow_growth_masks_and_their_removal():
    """Mid-ramp masks (width, FFN, depth) and their removal at the ramp's end reach the compiled blocks."""
    pytest.importorskip("torch._inductor")
    from flm.config import GrowthConfig, ModelConfig
    from flm.distributed.parallelize import apply_compile
    from flm.growth import grow_model
    from flm.model import FLM

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, d_model=32, n_heads=4, n_layers=2, max_seq_len=32)
    grown = grow_model(FLM(cfg), GrowthConfig(d_model=48, d_ff=160, n_layers=3)).model.eval()
    grown.set_mask_value(0.5)
    compiled = FLM(grown.cfg).eval()
    compiled.load_state_dict(grown.state_dict())
    compiled.load_growth_state(grown.growth_state())
    apply_compile(compiled)
    x = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        mid_ramp = grown(x)
        torch.testing.assert_close(compiled(x), mid_ramp, rtol=1e-4, atol=1e-4)
        grown.end_growth()
        compiled.end_growth()
        plain = grown(x)
        assert (plain - mid_ramp).abs().max() > 1e-2  # the masks matter, so a stale graph would show
        torch.testing.assert_close(compiled(x), plain, rtol=1e-4, atol=1e-4)
