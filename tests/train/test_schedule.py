"""Each stage's share of a progressive run's LR schedule, in both lr modes: under 'inherit' the LR is
continuous at every stage boundary unless a stage asks for a change (lr_scale, re-warmed or not)."""

from __future__ import annotations

import pytest

from flm.config import config_from_dict
from flm.errors import FlmError
from flm.stages import resolve_stages
from flm.train.schedule import CosineSchedule, StageSchedule, stage_schedules


def _plan(lr_mode: str, stages: list[dict], lr: float = 1e-3, min_lr: float = 1e-4) -> list[StageSchedule]:
    cfg = config_from_dict({
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
        "optim": {"lr": lr, "min_lr": min_lr, "warmup_steps": 4},
        "train": {"batch_size": 4},
        "lr_mode": lr_mode,
        "stages": stages,
    })
    return stage_schedules(cfg, resolve_stages(cfg))


def _grow(**kw) -> dict:
    return {"grow": {"n_layers": 4, "ramp_steps": 2}, **kw}


def _jump(prev: StageSchedule, prev_steps: int, nxt: StageSchedule) -> float:
    """Relative jump of the LR at a boundary: the next stage's first LR against the one the previous stage's
    schedule would give next."""
    would = prev(prev_steps)
    return abs(nxt(0) - would) / would


def test_inherit_is_one_cosine_over_the_whole_plan():
    first, second, third = _plan("inherit", [{"steps": 10}, {"steps": 6, **_grow()}, {"steps": 5, **_grow()}])
    whole = CosineSchedule(1e-3, 1e-4, 4, 21)
    got = [first(s) for s in range(10)] + [second(s) for s in range(6)] + [third(s) for s in range(5)]
    assert got == pytest.approx([whole(s) for s in range(21)], rel=1e-12)
    assert _jump(first, 10, second) <= 1e-6 and _jump(second, 6, third) <= 1e-6


def test_the_paper_plan_is_continuous_at_every_boundary():
    """configs/flm-101b.toml's three stages (52,000 / 8,400 / 6,000 steps, 2,000 warmup, 4e-4 -> 6e-6)."""
    stages = [{"steps": 52000, "lr": 4e-4, "warmup_steps": 2000}, {"steps": 8400, **_grow()},
              {"steps": 6000, "grow": {"n_layers": 6, "ramp_steps": 2}}]
    scheds = _plan("inherit", stages, lr=4e-4, min_lr=6e-6)
    for (prev, n), nxt in zip(zip(scheds, (52000, 8400)), scheds[1:]):
        assert _jump(prev, n, nxt) <= 1e-6
    assert scheds[0](1999) == pytest.approx(4e-4) and scheds[2](5999) == pytest.approx(6e-6, rel=1e-3)


def test_lr_scale_jumps_at_once_and_later_stages_inherit_the_scaled_lr():
    first, second, third = _plan(
        "inherit", [{"steps": 10}, {"steps": 6, **_grow(lr_scale=2.0)}, {"steps": 5, **_grow()}]
    )
    whole = CosineSchedule(1e-3, 1e-4, 4, 21)
    assert [second(s) for s in range(6)] == pytest.approx([2 * whole(10 + s) for s in range(6)], rel=1e-12)
    assert second(0) / first(10) == pytest.approx(2.0)  # the jump the stage asked for
    assert _jump(second, 6, third) <= 1e-6  # stage 3 carries stage 2's scaled LR on
    assert third(4) == pytest.approx(2 * whole(20))


def test_rewarmup_moves_from_the_inherited_lr_to_the_scaled_one():
    first, second = _plan("inherit", [{"steps": 10}, {"steps": 6, **_grow(lr_scale=0.5, warmup_steps=4)}])
    whole = CosineSchedule(1e-3, 1e-4, 4, 16)
    assert _jump(first, 10, second) <= 1e-6  # starts where stage 1 would go on: not from 0, not from a stage lr
    assert second(2) == pytest.approx(whole(12) * 0.75)  # half way from 1x to 0.5x
    assert [second(s) for s in (4, 5)] == pytest.approx([0.5 * whole(14), 0.5 * whole(15)])


def test_restart_warms_up_and_decays_every_stage_on_its_own():
    first, second = _plan("restart", [{"steps": 10}, {"steps": 6, "lr": 5e-4, "warmup_steps": 2, **_grow()}])
    assert [first(s) for s in range(10)] == [CosineSchedule(1e-3, 1e-4, 4, 10)(s) for s in range(10)]
    assert [second(s) for s in range(6)] == [CosineSchedule(5e-4, 1e-4, 2, 6)(s) for s in range(6)]
    assert second(1) == 5e-4 and second(5) > 1e-4


@pytest.mark.parametrize(
    "mode, stage, needle",
    [
        ("inherit", {"lr": 2e-4, "lr_scale": 0.5}, "stages[1] sets both lr (0.0002) and lr_scale (0.5)"),
        ("inherit", {"warmup_steps": 2}, "set stages[1].lr (or lr_scale), or drop the warmup"),
        ("restart", {"lr_scale": 2.0}, "stages[1].lr_scale: lr_mode 'restart' gives each stage its lr"),
    ],
)
def test_lr_keys_that_contradict_the_mode_are_refused(mode, stage, needle):
    with pytest.raises(FlmError) as e:
        _plan(mode, [{"steps": 10}, {"steps": 6, **_grow(**stage)}])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_first_stage_has_nothing_to_scale():
    with pytest.raises(FlmError, match=r"stages\[0\].lr_scale: the first stage has no LR to inherit"):
        _plan("inherit", [{"steps": 10, "lr_scale": 2.0}, {"steps": 6, **_grow()}])


def test_decay_steps_is_the_horizon_of_the_one_cosine():
    """optim.decay_steps moves the cosine's end past the plan: the run ends above min_lr; unset, it is the plan."""
    cfg = config_from_dict({
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
        "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 4, "decay_steps": 40},
        "train": {"batch_size": 4},
        "stages": [{"steps": 10}, {"steps": 6, **_grow()}],
    })
    first, second = stage_schedules(cfg, resolve_stages(cfg))
    whole = CosineSchedule(1e-3, 1e-4, 4, 40)
    got = [first(s) for s in range(10)] + [second(s) for s in range(6)]
    assert got == pytest.approx([whole(s) for s in range(16)], rel=1e-12)
    assert second(5) > 5e-4  # 16 of 40 steps: far above the floor
    one = config_from_dict({**cfg.model_dump(exclude={"stages"}), "train": {"steps": 10, "batch_size": 4}})
    assert stage_schedules(one, resolve_stages(one))[0](9) == pytest.approx(whole(9))


def test_a_later_stage_lr_is_its_start_lr_reached_from_the_inherited_one():
    first, second, third = _plan(
        "inherit", [{"steps": 10}, {"steps": 6, **_grow(lr=5e-4, warmup_steps=4)}, {"steps": 5, **_grow(lr=2e-4)}]
    )
    whole = CosineSchedule(1e-3, 1e-4, 4, 21)
    assert _jump(first, 10, second) <= 1e-6  # the warmup starts where stage 1 would go on
    scale = 5e-4 / whole(10)
    assert [second(s) for s in (4, 5)] == pytest.approx([scale * whole(14), scale * whole(15)], rel=1e-12)
    assert third(0) == pytest.approx(2e-4, rel=1e-12)  # no warmup: the stage starts at its lr at once
    assert third(4) == pytest.approx(2e-4 * whole(20) / whole(16), rel=1e-12)  # then the same cosine, scaled


@pytest.mark.parametrize(
    "mode, optim, needle",
    [
        ("restart", {"decay_steps": 50}, "optim.decay_steps = 50: lr_mode 'restart' decays every stage"),
        ("inherit", {"decay_steps": 3}, "optim.decay_steps (3) ends the cosine before optim.warmup_steps (4)"),
    ],
)
def test_decay_steps_that_cannot_apply_are_refused(mode, optim, needle):
    with pytest.raises(FlmError) as e:
        config = {
            "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
            "optim": {"warmup_steps": 4, **optim}, "train": {"batch_size": 4}, "lr_mode": mode,
            "stages": [{"steps": 10}, {"steps": 6, **_grow()}],
        }
        cfg = config_from_dict(config)
        resolve_stages(cfg)
    assert needle in str(e.value) and "\n" not in str(e.value)
