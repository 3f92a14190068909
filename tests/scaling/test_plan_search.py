"""flm plan search: candidates keep the plan's shapes and meet the FLOP budget; a tiny search runs end to end
and writes a ranked table and the best plan as a config that loads."""

from __future__ import annotations

import json

import pytest

from flm.cli import main
from flm.config import config_from_dict, load_config, save_config
from flm.scaling.plan_search import PlanChoice, candidate_config, choices, plan_flops
from flm.stages import resolve_stages
from tests.conftest import tiny_config_dict


@pytest.fixture
def plan(tiny_corpus, prepared_dir):
    cfg = tiny_config_dict(tiny_corpus, prepared_dir, eval_every=4, ckpt_every=100)
    cfg["lr_mode"] = "inherit"
    cfg["stages"] = [{"steps": 8},
                     {"steps": 4, "grow": {"d_model": 48, "n_heads": 3, "ramp_steps": 2}},
                     {"steps": 4, "grow": {"n_layers": 3, "ramp_steps": 2}}]
    return config_from_dict(cfg)


def test_candidates_keep_the_shapes_and_meet_the_budget(plan) -> None:
    budget = plan_flops(plan)
    final = resolve_stages(plan)[-1].model
    picks = choices(plan, 6, seed=1)
    assert picks[0].first_share is None and len(set(picks)) == 6
    for choice in [*picks, PlanChoice(0.8, 0.25, 2.0, (1, 0))]:
        cand = candidate_config(plan, choice, budget)
        stages = resolve_stages(cand)
        assert stages[-1].model == final, choice.tag
        assert abs(plan_flops(cand) / budget - 1) < 0.15, choice.tag  # steps are whole numbers
        if choice.first_share is not None:
            first = stages[0].steps * stages[0].batch_size * plan.seq_len
            assert stages[0].growth is None and first > 0
            assert all(s.lr_scale == (choice.lr_scale if choice.lr_scale != 1 else None) for s in stages[1:])
    swapped = resolve_stages(candidate_config(plan, PlanChoice(0.7, 0.25, 1.0, (1, 0)), budget))
    assert swapped[1].model.n_layers == 3 and swapped[1].model.d_model == 32, "depth grows first"


def test_a_tiny_search_ranks_the_schedules_and_writes_the_best_plan(plan, tmp_path, capsys) -> None:
    save_config(plan, tmp_path / "plan.toml")
    out = tmp_path / "search"
    assert main(["plan", "search", str(tmp_path / "plan.toml"), "--out", str(out), "--trials", "2"]) == 0
    rows = [json.loads(x) for x in (out / "search.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["val_loss"] <= rows[1]["val_loss"]
    assert {r["tag"] for r in rows} == {p.name for p in (out / "trials").iterdir()}
    best = load_config(out / "best.toml")
    assert resolve_stages(best)[-1].model == resolve_stages(plan)[-1].model and (out / "search.png").is_file()
    assert "best:" in capsys.readouterr().out
    stamp = (out / "search.jsonl").stat().st_mtime_ns  # a second call reads the finished trials
    assert main(["plan", "search", str(tmp_path / "plan.toml"), "--out", str(out), "--trials", "2"]) == 0
    assert [json.loads(x) for x in (out / "search.jsonl").read_text().splitlines()] == rows
    assert (out / "search.jsonl").stat().st_mtime_ns >= stamp


def test_a_config_without_growth_is_refused(tiny_corpus, prepared_dir, tmp_path, capsys) -> None:
    save_config(config_from_dict(tiny_config_dict(tiny_corpus, prepared_dir)), tmp_path / "one.toml")
    assert main(["plan", "search", str(tmp_path / "one.toml"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least one growth" in err[0] and not (tmp_path / "s").exists()
