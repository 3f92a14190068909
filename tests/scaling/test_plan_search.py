"""flm plan search: candidates keep the plan's shapes and meet the FLOP budget; a tiny search runs end to end
and writes a ranked table and the best plan as a config that loads."""

from __future__ import annotations

import json

import pytest

from flm.cli import main
from flm.config import config_from_dict, config_to_dict, load_config, save_config
from flm.flops import flops_per_token
from flm.scaling.plan_search import PlanChoice, candidate_config, choices, grid, plan_flops
from flm.stages import resolve_stages
from flm.train.schedule import stage_lrs
from tests.conftest import tiny_config_dict

WIDTHS = ("d_model", "d_ff", "n_heads")


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


def test_candidate_zero_and_the_old_tags_are_unchanged(plan) -> None:
    zero = choices(plan, 1)
    assert zero == [PlanChoice(None, None, 1.0, (0, 1))]
    given = config_to_dict(candidate_config(plan, zero[0], plan_flops(plan)))
    assert given == {**config_to_dict(plan), "name": "tiny-as-given"}
    old = PlanChoice(0.8, 0.25, 2.0, (1, 0))  # the defaults of the new dimensions add nothing to a tag
    assert old.tag == "first0.8_ramp0.25_lr2_order10" and (old.start, old.methods, old.lr_mode) == (None,) * 3
    assert PlanChoice(0.8, 0.25, 1.0, (1, 0), (16, 1), ("gstack", "msg"), "restart").tag == \
        "first0.8_ramp0.25_lr1_order10_start16x1_gstack-msg_restart"


def _check_methods(stages) -> None:
    """gstack only where a boundary grows depth alone by an integer factor, hyperclone only width alone."""
    for a, b in zip(stages, stages[1:]):
        old, new = a.model.shape(), b.model.shape()
        if b.growth.method == "gstack":
            assert all(old[k] == new[k] for k in WIDTHS) and new["n_layers"] % old["n_layers"] == 0
        if b.growth.method == "hyperclone":
            assert old["n_layers"] == new["n_layers"] and all(new[k] % old[k] == 0 for k in WIDTHS)


def test_every_search_dimension_keeps_the_final_shape_and_the_budget(plan, tmp_path) -> None:
    budget = plan_flops(plan)
    final = resolve_stages(plan)[-1].model.shape()
    pool = grid(plan)
    assert {c.start for c in pool} == {None, (32, 1), (16, 2), (16, 1)}  # width 1/2 (16: 1 head), depth 1/2
    assert {c.lr_mode for c in pool} == {None, "restart"} and {c.order for c in pool} == {(0, 1), (1, 0)}
    used = {m for c in pool for m in c.methods or ()}
    assert used == {"msg", "net2net", "gstack", "hyperclone"}
    assert not any(c.lr_mode == "restart" and c.lr_scale != 1 for c in pool)
    assert len(pool) == len(set(pool))
    one = {}  # one candidate of every shape, method and LR-mode combination, with varied shares
    for c in pool:
        one.setdefault((c.order, c.start, c.methods, c.lr_mode), c)
    assert len(one) > 30
    for c in one.values():
        cand = candidate_config(plan, c, budget)
        save_config(cand, tmp_path / "c.toml")
        stages = resolve_stages(load_config(tmp_path / "c.toml"))
        assert stages[-1].model.shape() == final, c.tag
        start = c.start or (32, 2)
        assert (stages[0].model.d_model, stages[0].model.n_layers) == start
        assert stages[0].model.head_dim == 16
        per_step = [s.batch_size * plan.seq_len * flops_per_token(s.model, plan.seq_len) for s in stages]
        spent = sum(s.steps * f for s, f in zip(stages, per_step))
        assert abs(spent - budget) <= sum(per_step) / 2, c.tag  # each stage within half a step of its share
        assert spent / budget == pytest.approx(1, abs=0.1)
        assert [s.growth.method for s in stages[1:]] == list(c.methods or ("msg", "msg"))
        _check_methods(stages)
        lrs = stage_lrs(cand, stages)
        if c.lr_mode == "restart":  # the LR rewinds at each growth: a warmup again, up to the peak
            assert cand.lr_mode == "restart" and all(s.lr_scale is None for s in stages)
            assert all(1 <= s.warmup_steps <= s.growth.ramp_steps for s in stages[1:])
            assert all(b.after_warmup == cand.optim.lr > a.last for a, b in zip(lrs, lrs[1:]))
        else:  # one schedule: each stage starts where the last left it (times the LR scale)
            assert cand.lr_mode == "inherit"
            assert all(s.lr_scale == (c.lr_scale if c.lr_scale != 1 else None) for s in stages[1:])
            assert all(b.after_warmup < cand.optim.lr for b in lrs[1:])


def test_a_restart_plan_searches_inherit_too(plan) -> None:
    data = config_to_dict(plan)
    data["lr_mode"] = "restart"
    data["stages"][1]["warmup_steps"] = 2
    restart = config_from_dict(data)
    pool = grid(restart)
    assert {c.lr_mode for c in pool} == {None, "inherit"}
    assert {c.lr_scale for c in pool if c.lr_mode is None} == {1.0}
    assert {c.lr_scale for c in pool if c.lr_mode == "inherit"} == {0.5, 1.0, 2.0}
    c = next(c for c in pool if c.lr_mode == "inherit" and c.lr_scale == 2.0)
    stages = resolve_stages(candidate_config(restart, c, plan_flops(restart)))
    assert all(s.warmup_steps is None and s.lr_scale == 2.0 for s in stages[1:])
    c = next(c for c in pool if c.lr_mode is None)
    assert candidate_config(restart, c, plan_flops(restart)).lr_mode == "restart"


def _choice(row: dict) -> PlanChoice:
    """The PlanChoice of a search.jsonl row."""
    tup = {k: tuple(row[k]) if row[k] is not None else None for k in ("order", "start", "methods")}
    return PlanChoice(row["first_share"], row["ramp_share"], row["lr_scale"], tup["order"], tup["start"],
                      tup["methods"], row["lr_mode"])


def test_a_tiny_search_ranks_the_schedules_and_writes_the_best_plan(plan, tmp_path, capsys) -> None:
    save_config(plan, tmp_path / "plan.toml")
    out = tmp_path / "search"
    assert main(["plan", "search", str(tmp_path / "plan.toml"), "--out", str(out), "--trials", "2"]) == 0
    rows = [json.loads(x) for x in (out / "search.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["val_loss"] <= rows[1]["val_loss"]
    assert {r["tag"] for r in rows} == {p.name for p in (out / "trials").iterdir()}
    best = load_config(out / "best.toml")
    assert resolve_stages(best)[-1].model == resolve_stages(plan)[-1].model and (out / "search.png").is_file()
    assert _choice(rows[0]).tag == rows[0]["tag"]  # the JSON carries every dimension of the choice
    want = config_to_dict(candidate_config(plan, _choice(rows[0]), plan_flops(plan)))
    assert config_to_dict(best) == {**want, "name": plan.name}  # start, methods, LR mode and steps all kept
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
