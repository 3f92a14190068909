"""`flm eval teacher`: held-out accuracy from the two label tokens, chance levels, seen tasks."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from flm.cli import main
from flm.config import DataSource, ModelConfig, config_from_dict, save_config
from flm.data.loader import TokenLoader
from flm.data.prepare import prepare_data
from flm.data.teacher import TeacherItem, TeacherSource
from flm.eval.models import FlmScorer, load_scorer
from flm.eval.scorer import Scorer
from flm.eval.teacher import margins, prompt_ids, run_teacher, score_items, seen_note, seen_tasks
from flm.model import FLM
from tests.data.conftest import data_cfg, make_text
from tests.data.test_teacher import _tasks_file


def test_score_items_counts_argmax_and_signs() -> None:
    items = [TeacherItem("t", "a", ("p0", "p1", "p2"), 1), TeacherItem("t", "b", ("q0", "q1"), 0)]
    got = score_items(items, [0.5, 2.0, -1.0, -0.2, 0.1])  # item a right (2 of 3 signs), b wrong (0 of 2)
    assert got == {"accuracy": 0.5, "chance": (1 / 3 + 1 / 2) / 2, "proposition_accuracy": 2 / 5}


class Oracle(Scorer):
    """Characters as tokens; after a proposition that is true, token 'Y' beats token 'N'."""

    def __init__(self, true: set[str]) -> None:
        self.true, self.max_length, self.batch_tokens = true, 4096, 3000

    def encode(self, text: str) -> list[int]:
        return [min(ord(c), 255) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(map(chr, ids))

    @property
    def vocab_size(self) -> int:
        return 256

    @property
    def prefix_id(self) -> int:
        return 0

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*tokens.shape, 256)
        for i, row in enumerate(tokens.tolist()):
            for j in range(1, len(row) + 1):
                out[i, j - 1, ord("Y") if self.decode(row[1:j]) in self.true else ord("N")] = 1.0
        return out


def test_an_oracle_scores_every_held_out_item(tmp_path: Path) -> None:
    path = _tasks_file(tmp_path)
    src = DataSource(kind="teacher", tasks=["color", "plus"], templates=str(path))
    items = TeacherSource(src, "x", "heldout").items()
    true = {it.propositions[it.gold] for v in items.values() for it in v}
    report = run_teacher(Oracle(true), ["color", "plus"], labels=("Y", "N"), templates=str(path), progress=False)
    assert report["tasks"]["color"]["accuracy"] == 1.0 and report["tasks"]["color"]["proposition_accuracy"] == 1.0
    assert report["tasks"]["color"]["chance"] == pytest.approx(1 / 3) and report["tasks"]["plus"]["chance"] == 0.5
    assert report["tasks"]["color"]["n"] == len(items["color"]) and report["seen_as_teacher"] == []
    flipped = run_teacher(Oracle(true), ["color"], labels=("N", "Y"), templates=str(path), progress=False)
    assert flipped["tasks"]["color"]["accuracy"] == 0.0


def test_batched_margins_equal_one_row_at_a_time(flm_checkpoint: Path) -> None:
    scorer = load_scorer(str(flm_checkpoint))
    scorer.batch_tokens = 64
    texts = ["red green", "a much longer proposition about colors and places", "x"]
    got = margins(scorer, texts, 3, 4, progress=False)
    for text, m in zip(texts, got):
        row = torch.tensor([[scorer.prefix_id] + scorer.encode(text)])
        with torch.no_grad():
            last = scorer.logits(row)[0, -1]
        assert m == pytest.approx(float(last[3] - last[4]), abs=1e-5)


def test_cli_table_json_and_bad_labels(flm_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _tasks_file(tmp_path)
    out = tmp_path / "r.json"
    args = ["eval", "teacher", str(flm_checkpoint), "--tasks", "color", "--templates", str(path), "--limit", "10"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    assert "teacher signals, held-out items" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["tasks"]["color"]["n"] == 10 and 0 <= report["tasks"]["color"]["accuracy"] <= 1
    assert main([*args, "--labels", "several tokens here", "label_neg"]) == 2
    assert "is not a token of this tokenizer" in capsys.readouterr().err


def test_seen_tasks_cover_every_stage() -> None:
    cfg = config_from_dict({
        "data": {"train": [{"path": "a.txt"}]},
        "optim": {"warmup_steps": 1},
        "stages": [{"steps": 5}, {"steps": 5, "grow": {"n_layers": 5, "ramp_steps": 1},
                                  "data": {"train": [{"path": "a.txt"}, {"kind": "teacher", "tasks": ["sst2", "copa"],
                                                                         "holdout": 0.3}]}}],
    })
    assert seen_tasks([cfg]) == {"sst2": 0.3, "copa": 0.3}


def test_bench_names_the_tasks_seen_as_teacher(flm_checkpoint: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    scorer = load_scorer(str(flm_checkpoint))
    run = tmp_path / "run"
    run.mkdir()
    cfg = config_from_dict({"data": {"train": [{"path": "a.txt"}, {"kind": "teacher", "tasks": ["sst2", "mmlu"]}]}})
    save_config(cfg, run / "config.toml")
    scorer.source = str(run)
    report: dict = {}
    seen_note(scorer, report, ["sst2", "arc_easy", "mmlu"])
    assert report["seen_as_teacher"] == ["mmlu", "sst2"]
    err = capsys.readouterr().err
    assert "sst2 (80% of its items)" in err and "mmlu (" not in err, "MMLU's test split was not trained on"


def test_scored_prompts_are_the_training_tokens_before_the_label(tmp_path: Path) -> None:
    """What `flm eval teacher` feeds the model is what training put before each label token: the EOS that
    ended the previous packed sample, then the proposition, encoded the same way."""
    path = _tasks_file(tmp_path)
    text = tmp_path / "t.txt"
    text.write_text(make_text(random.Random(0), 3000))
    teacher = {"kind": "teacher", "tasks": ["color", "plus"], "templates": str(path)}
    cfg = data_cfg(tmp_path, [{"path": str(text), "weight": 0}, teacher], valid=[{"path": str(text)}])
    prepared = prepare_data(cfg, progress=False)
    tok = prepared.tokenizer
    scorer = FlmScorer(FLM(ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=1,
                                       max_seq_len=64)), tok)
    truth = {tuple(prompt_ids(scorer, t)): true
             for t, true in TeacherSource(DataSource(**teacher), "x", "train").samples()}
    label = {True: tok.special["label_pos"], False: tok.special["label_neg"]}
    x, y, mask = next(TokenLoader(prepared, "train", seq_len=64, batch_size=8, seed=0))
    checked = 0
    for row, pos in mask.nonzero().tolist():
        eos = (x[row, : pos + 1] == tok.eos_id).nonzero()
        start = int(eos[-1]) if len(eos) else 0
        prompt = x[row, start : pos + 1].tolist()
        prompt = prompt if len(eos) else [tok.eos_id, *prompt]  # a window's first sample has no EOS before it
        assert tuple(prompt) in truth, tok.decode(prompt)
        assert int(y[row, pos]) == label[truth[tuple(prompt)]]
        checked += 1
    assert checked >= 8
