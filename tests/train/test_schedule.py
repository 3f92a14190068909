"""Each stage's share of a progressive run's LR schedule, in both lr modes."""

from __future__ import annotations

import pytest

from flm.config import config_from_dict
from flm.stages import resolve_stages
from flm.train.schedule import CosineSchedule, stage_schedules


def _plan(lr_mode: str, stages: list[dict]) -> list:
    cfg = config_from_dict({
        "model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
        "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 4},
        "train": {"batch_size": 4},
        "lr_mode": lr_mode,
        "stages": stages,
    })
    return stage_schedules(cfg, resolve_stages(cfg))


GROW = {"grow": {"n_layers": 4, "ramp_steps": 2}}


def test_inherit_is_one_cosine_over_the_whole_plan():
    first, second = _plan("inherit", [{"steps": 10}, {"steps": 6, **GROW}])
    whole = CosineSchedule(1e-3, 1e-4, 4, 16)
    assert [first(s) for s in range(10)] + [second(s) for s in range(6)] == [whole(s) for s in range(16)]


def test_inherit_stage_lr_rescales_its_share_and_warmup_rewarms_it():
    _, second = _plan("inherit", [{"steps": 10}, {"steps": 6, "lr": 2e-4, "warmup_steps": 2, **GROW}])
    whole = CosineSchedule(1e-3, 1e-4, 4, 16)
    assert second(0) == pytest.approx(2e-4 / 2)  # the re-warmup's first step, of the stage-start LR
    share = (whole(15) - 1e-4) / (whole(10) - 1e-4)  # of the way from the floor, as the plan's cosine
    assert second(2) < 2e-4 and second(5) == pytest.approx(1e-4 + (2e-4 - 1e-4) * share)


def test_restart_warms_up_and_decays_every_stage_on_its_own():
    first, second = _plan("restart", [{"steps": 10}, {"steps": 6, "lr": 5e-4, "warmup_steps": 2, **GROW}])
    assert [first(s) for s in range(10)] == [CosineSchedule(1e-3, 1e-4, 4, 10)(s) for s in range(10)]
    assert [second(s) for s in range(6)] == [CosineSchedule(5e-4, 1e-4, 2, 6)(s) for s in range(6)]
    assert second(1) == 5e-4 and second(5) > 1e-4
