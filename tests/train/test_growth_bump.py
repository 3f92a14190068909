"""The loss bump of each growth: the largest rise of the training and validation losses during the ramp over
their values right before the growth."""

from __future__ import annotations

import pytest

from flm.config import config_from_dict
from flm.stages import resolve_stages
from flm.train.growth_bump import EVENT, bump_lines, bump_record, growth_bump, no_gain_lines


def _stages():
    return resolve_stages(config_from_dict({
        "model": {"vocab_size": 512, "d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
        "optim": {"warmup_steps": 2},
        "stages": [{"steps": 10}, {"steps": 8, "grow": {"d_model": 64, "ramp_steps": 4}},
                   {"steps": 8, "grow": {"n_layers": 3, "ramp_steps": 4}}],
    }))


def _row(stage: int, step: int, **kw) -> dict:
    return {"stage": stage, "step": step, "tokens": 100 * step, "flops": 1.0 * step, **kw}


ROWS = [
    _row(1, 9, loss=3.0), _row(1, 10, loss=2.9, val_loss=3.1),
    _row(2, 0, val_loss=3.1),
    _row(2, 1, loss=3.2), _row(2, 2, loss=3.05, val_loss=3.25), _row(2, 4, loss=2.8, val_loss=3.0),
    _row(2, 5, loss=3.9),  # after the ramp: not part of the bump
    _row(2, 8, loss=2.7, val_loss=2.95),
    _row(3, 0, val_loss=2.95), _row(3, 2, loss=2.6, val_loss=2.9), _row(3, 4, loss=2.65, val_loss=2.9),
]


def test_bump_is_the_highest_loss_of_the_ramp_over_the_loss_before():
    s1, s2, s3 = _stages()
    b = growth_bump(ROWS, s1, s2)
    assert b["loss_before"] == 2.9 and b["loss_bump"] == pytest.approx(0.3) and b["loss_bump_step"] == 1
    assert b["val_loss_before"] == 3.1 and b["val_loss_bump"] == pytest.approx(0.15) and b["val_loss_bump_step"] == 2
    c = growth_bump(ROWS, s2, s3)  # losses that never rise above the value before: no bump
    assert (c["loss_bump"], c["val_loss_bump"]) == (0.0, 0.0) and c["ramp_steps"] == 4


def test_the_bump_goes_to_metrics_at_the_stage_end_and_to_the_report():
    stages = _stages()
    assert bump_record(ROWS, stages, stages[0]) is None
    rec = bump_record(ROWS, stages, stages[1])
    assert rec is not None and rec["event"] == EVENT and (rec["stage"], rec["step"], rec["tokens"]) == (2, 8, 800)
    lines = bump_lines(ROWS + [rec], stages)
    assert len(lines) == 2 and lines[0].startswith("- Loss bump of the growth into stage 2 (ramp of 4 steps): "
                                                   "training +0.3000 over 2.9000 (highest at step 1)")


def test_a_stage_without_a_visible_gain_is_explained_in_the_report():
    """A grown stage whose validation loss ends where it started (the demo's last stage once did: 4.6795 ->
    4.6797) gets a line naming its ramp, its bump and the LR after the ramp; a stage that gains gets none."""
    stages = _stages()
    flat = [r for r in ROWS if r["stage"] < 3] + [
        _row(3, 0, val_loss=2.95), _row(3, 2, loss=2.6, val_loss=3.0), _row(3, 4, loss=2.65, val_loss=2.99),
        _row(3, 6, loss=2.6, lr=3.1e-4), _row(3, 8, loss=2.6, val_loss=2.951, lr=3.0e-4),
    ]
    assert no_gain_lines(ROWS, stages) == []  # stage 2: 3.1 -> 2.95, stage 3: 2.95 -> 2.9
    assert no_gain_lines(flat, stages) == [
        "- Stage 3 shows no gain (val loss 2.9500 -> 2.9510): its growth ramp (4 of its 8 steps) raised the "
        "validation loss by +0.0500 (step 2), and the 4 steps after the ramp, at LR 3.1e-04 to 3.0e-04, won back no "
        "more than that; a longer stage (or a shorter ramp) would show a gain."
    ]
