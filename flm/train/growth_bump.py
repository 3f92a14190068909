"""The loss bump of each growth of a progressive run: the largest rise of the training and of the validation
loss during the mask ramp over their values right before the growth (0 when neither rises above it).

Right before: the previous stage's last logged training loss and its final validation loss. During the ramp:
the grown stage's losses at steps 1..ramp_steps (the trainer logs every training loss of a ramp and validates
at its quarter points, flm.train.loop) and the validation loss at step 0, which a function-preserving growth
keeps equal to the loss before. Written to metrics.jsonl (one record per growth) and to report.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flm.stages import Stage

EVENT = "growth loss bump"  # the "event" of its metrics.jsonl records


def _rise(before: float | None, during: list[tuple[int, float]]) -> tuple[float | None, int | None]:
    """(largest rise over ``before``, at least 0; the step of the highest loss), or (None, None) without data."""
    if before is None or not during:
        return None, None
    step, peak = max(during, key=lambda sv: sv[1])
    return max(0.0, peak - before), step


def growth_bump(rows: Sequence[dict[str, Any]], prev: Stage, stage: Stage) -> dict[str, Any]:
    """The bump of the growth from ``prev`` into ``stage``, from the run's metrics records."""
    assert stage.growth is not None
    ramp = stage.growth.ramp_steps
    before = [r for r in rows if r.get("stage") == prev.index and "event" not in r]
    during = [r for r in rows if r.get("stage") == stage.index and "event" not in r and r["step"] <= ramp]
    out: dict[str, Any] = {"stage": stage.index, "ramp_steps": ramp}
    for key in ("loss", "val_loss"):
        last = next((r[key] for r in reversed(before) if key in r), None)
        rise, at = _rise(last, [(r["step"], r[key]) for r in during if key in r])
        out |= {f"{key}_before": last, f"{key}_bump": rise, f"{key}_bump_step": at}
    return out


def bump_record(rows: Sequence[dict[str, Any]], stages: Sequence[Stage], stage: Stage) -> dict[str, Any] | None:
    """The metrics.jsonl record of the growth into ``stage`` (at its last logged step, so that it stays the
    stage's last line), or None for the first stage or a stage not trained yet."""
    if stage.growth is None:
        return None
    own = [r for r in rows if r.get("stage") == stage.index and "event" not in r]
    if not own:
        return None
    last = own[-1]
    bump = growth_bump(rows, stages[stage.index - 2], stage)
    return {"step": last["step"], "tokens": last["tokens"], "flops": last["flops"], "event": EVENT, **bump}


def bump_lines(rows: Sequence[dict[str, Any]], stages: Sequence[Stage]) -> list[str]:
    """report.md's lines: one per growth."""
    lines = []
    for prev, stage in zip(stages, stages[1:]):
        b = growth_bump(rows, prev, stage)
        parts = []
        for key, name in (("loss", "training"), ("val_loss", "validation")):
            if not b[f"{key}_bump"]:  # None (no data) or 0 (never above the loss before)
                if b[f"{key}_bump"] == 0:
                    parts.append(f"{name} never above {b[f'{key}_before']:.4f}")
                continue
            parts.append(f"{name} +{b[f'{key}_bump']:.4f} over {b[f'{key}_before']:.4f} "
                         f"(highest at step {b[f'{key}_bump_step']})")
        if parts:
            lines.append(f"- Loss bump of the growth into stage {stage.index} (ramp of {b['ramp_steps']} steps): "
                         f"{'; '.join(parts)}.")
    return lines


VISIBLE_GAIN = 1e-3  # a stage whose validation loss falls by less than 0.1% of its start shows no gain


def no_gain_lines(rows: Sequence[dict[str, Any]], stages: Sequence[Stage]) -> list[str]:
    """report.md's word on a grown stage that ends (nearly) where it started: how much of it the ramp took,
    its bump, and the LR the steps after the ramp had to win it back with."""
    lines = []
    for prev, stage in zip(stages, stages[1:]):
        own = [r for r in rows if r.get("stage") == stage.index and "event" not in r]
        vals = [r for r in own if "val_loss" in r]
        if len(vals) < 2 or vals[0]["step"] != 0 or vals[-1]["val_loss"] < vals[0]["val_loss"] * (1 - VISIBLE_GAIN):
            continue
        b, ramp = growth_bump(rows, prev, stage), stage.growth.ramp_steps if stage.growth else 0
        lrs = [r["lr"] for r in own if "lr" in r and r["step"] > ramp]
        lr = f", at LR {max(lrs):.1e} to {min(lrs):.1e}" if lrs else ""
        bump = (f" raised the validation loss by +{b['val_loss_bump']:.4f} (step {b['val_loss_bump_step']})"
                if b["val_loss_bump"] else " did not raise the validation loss")
        lines.append(
            f"- Stage {stage.index} shows no gain (val loss {vals[0]['val_loss']:.4f} -> {vals[-1]['val_loss']:.4f}): "
            f"its growth ramp ({ramp} of its {stage.steps} steps){bump}, and the {stage.steps - ramp} steps after "
            f"the ramp{lr}, won back no more than that; a longer stage (or a shorter ramp) would show a gain."
        )
    return lines
