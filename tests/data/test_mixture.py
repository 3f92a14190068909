"""Mixtures of text and teacher sources: proportions, exact resume under 1 and 2 ranks, per-stage mixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flm.config import config_from_dict
from flm.data.loader import TokenLoader
from flm.data.prepare import PreparedData, prepare_data
from flm.errors import FlmError
from flm.stages import resolve_stages

from .conftest import data_cfg
from .test_teacher import _tasks_file

T = 48


@pytest.fixture
def mixture(corpus: Path, tmp_path: Path) -> PreparedData:
    path = _tasks_file(tmp_path)
    cfg = data_cfg(tmp_path, [
        {"path": str(corpus / "txt" / "*.txt"), "weight": 2.0},
        {"path": str(corpus / "c.jsonl"), "weight": 1.0},
        {"kind": "teacher", "tasks": ["color", "plus"], "templates": str(path), "weight": 1.0},
    ])
    return prepare_data(cfg, progress=False)


def test_proportions_within_two_percent_over_10k_samples(mixture: PreparedData) -> None:
    loader = TokenLoader(mixture, "train", seq_len=T, batch_size=100, seed=3)
    for _ in range(100):
        next(loader)
    share = np.array(loader.state_dict()["counts"]) / 10_000
    assert np.abs(share - [0.5, 0.25, 0.25]).max() < 0.02, share


def _batches(loader: TokenLoader, n: int) -> list[tuple[torch.Tensor, ...]]:
    return [next(loader) for _ in range(n)]


def test_exact_resume_at_any_step_one_and_two_ranks(mixture: PreparedData) -> None:
    ref = TokenLoader(mixture, "train", seq_len=T, batch_size=8, seed=1)
    states, batches = [], []
    for _ in range(30):  # long enough to pass an epoch of the teacher and text sources
        states.append(ref.state_dict())
        batches.append(next(ref))
    assert max(ref.epochs()) > 1
    for k in (0, 7, 19, 29):
        again = TokenLoader(mixture, "train", seq_len=T, batch_size=8, seed=1)
        again.load_state_dict(states[k])
        assert all(torch.equal(a, b) for p, q in zip(_batches(again, 30 - k), batches[k:]) for a, b in zip(p, q))
        ranks = [TokenLoader(mixture, "train", seq_len=T, batch_size=4, rank=r, world_size=2, seed=1) for r in (0, 1)]
        for r in ranks:
            r.load_state_dict(states[k])
        for step in range(k, min(k + 5, 30)):
            halves = [next(r) for r in ranks]
            for j in range(3):
                assert torch.equal(torch.cat([halves[0][j], halves[1][j]]), batches[step][j]), (k, step)


def _plan(tmp_path: Path, stage2: dict) -> dict:
    return {
        "model": {"vocab_size": 512, "d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
        "data": {"train": [{"path": "a.txt"}, {"path": "b.txt", "weight": 0.0}]},
        "optim": {"warmup_steps": 2},
        "stages": [{"steps": 5}, {"steps": 5, "grow": {"n_layers": 3, "ramp_steps": 2}, **stage2}],
    }


def test_stage_mixtures(tmp_path: Path) -> None:
    stages = resolve_stages(config_from_dict(_plan(tmp_path, {"data": {"weights": [1.0, 3.0]}})))
    assert [s.weight for s in stages[0].cfg.data.train] == [1.0, 0.0]
    assert [s.weight for s in stages[1].cfg.data.train] == [1.0, 3.0]
    teacher = {"data": {"train": [{"path": "a.txt"}, {"kind": "teacher", "tasks": ["sst2"], "weight": 0.2}]}}
    stages = resolve_stages(config_from_dict(_plan(tmp_path, teacher)))
    assert [s.kind for s in stages[1].cfg.data.train] == ["text", "teacher"]
    with pytest.raises(FlmError, match="lists 1 weights for 2"):
        resolve_stages(config_from_dict(_plan(tmp_path, {"data": {"weights": [1.0]}})))
    with pytest.raises(FlmError, match="every source has weight 0"):
        resolve_stages(config_from_dict(_plan(tmp_path, {"data": {"weights": [0.0, 0]}})))


def test_adding_teacher_sources_keeps_the_tokenizer(corpus: Path, tmp_path: Path) -> None:
    plain = prepare_data(data_cfg(tmp_path, [{"path": str(corpus / "c.jsonl")}]), progress=False)
    path = _tasks_file(tmp_path)
    mixed = prepare_data(data_cfg(tmp_path, [{"path": str(corpus / "c.jsonl")},
                                             {"kind": "teacher", "tasks": ["color"], "templates": str(path)}]),
                         progress=False)
    assert mixed.hash != plain.hash
    assert mixed.tokenizer.backend.get_vocab() == plain.tokenizer.backend.get_vocab(), (
        "a late stage that adds teacher signals reads the same token ids")


def test_a_new_stage_mixture_reads_on_where_the_last_stopped(corpus: Path, tmp_path: Path) -> None:
    path = _tasks_file(tmp_path)
    text = [{"path": str(corpus / "txt" / "*.txt")}, {"path": str(corpus / "c.jsonl")}]
    before = prepare_data(data_cfg(tmp_path, text), progress=False)
    after = prepare_data(data_cfg(tmp_path, [{**text[0], "weight": 3.0}, text[1],
                                             {"kind": "teacher", "tasks": ["color"], "templates": str(path)}]),
                         progress=False)
    old = TokenLoader(before, "train", seq_len=T, batch_size=8, seed=2)
    for _ in range(6):
        next(old)
    state = old.state_dict()
    new = TokenLoader(after, "train", seq_len=T, batch_size=8, seed=2)
    assert not new.continues(state), "another training stream: not an exact resume"
    assert new.carry_over(state)
    assert new.state_dict()["counts"] == [*state["counts"], 0] and new.state_dict()["samples"] == 48
    assert not TokenLoader(after, "train", seq_len=T, batch_size=8, seed=3).carry_over(state)
    stream = np.concatenate([s.open(after.dtype)[0] for s in after.sources("train")[0].shards]).astype(np.int64)
    w = new._window(0, state["counts"][0])  # the window the old stage would have read next from source 0
    x, _, _ = next(new)
    assert any(torch.equal(row, torch.from_numpy(stream[w * T : w * T + T])) for row in x)
