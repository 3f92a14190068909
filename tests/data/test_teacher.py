"""Teacher signals: template expansion, stable disjoint splits, loss on the label token alone, bad input."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from flm.cli import main
from flm.config import DataConfig, DataSource, ModelConfig
from flm.data.loader import TokenLoader
from flm.data.prepare import prepare_data
from flm.data.teacher import TeacherSource, load_tasks, split_of, task_items
from flm.data.tokenizer import train_bpe
from flm.errors import FlmError
from flm.model import FLM

from .conftest import WORDS, data_cfg

COLORS = ["red", "green", "blue"]


def _tasks_file(folder: Path, templates: list[str] | None = None, labels: list[str] | None = None,
                items: list[dict] | None = None) -> Path:
    """A user task file: a 3-way classification of made-up sentences, and a multiple-choice task."""
    items = items if items is not None else [
        {"text": f"thing number {i} is painted {COLORS[i % 3]}", "label": COLORS[i % 3]} for i in range(200)
    ]
    (folder / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (folder / "mc.jsonl").write_text("".join(
        json.dumps({"q": f"what is {i} plus one", "choices": [str(i + 1), str(i + 7)], "answer": 0}) + "\n"
        for i in range(120)))
    templates = templates or ["{text} [sep] The color is {answer}.", "Color of ({text}): {answer}"]
    path = folder / "tasks.toml"
    path.write_text(
        "[tasks.color]\nkind = \"classification\"\ndata = \"items.jsonl\"\n"
        f"labels = {json.dumps(labels or COLORS)}\ntemplates = {json.dumps(templates)}\n\n"
        "[tasks.plus]\nkind = \"multiple_choice\"\ndata = \"mc.jsonl\"\n"
        'templates = ["Q: {q}? A: {answer}"]\n'
    )
    load_tasks.cache_clear()
    return path


def test_template_expansion_is_exact_and_deterministic(tmp_path: Path) -> None:
    tasks = load_tasks(str(_tasks_file(tmp_path)))
    assert {"sst2", "boolq", "copa", "next_sentence", "color", "plus"} <= set(tasks), "user tasks extend the built-in"
    src = DataSource(kind="teacher", tasks=["color"], templates=str(tmp_path / "tasks.toml"))
    items = task_items(tasks["color"], src)
    assert len(items) == 200
    first = items[0]
    assert first.gold == 0 and len(first.propositions) == 3
    assert set(first.propositions) in (
        {f"thing number 0 is painted red [sep] The color is {c}." for c in COLORS},
        {f"Color of (thing number 0 is painted red): {c}" for c in COLORS},
    )
    used = {it.propositions[0].startswith("Color of") for it in items}
    assert used == {True, False}, "several templates, chosen per item"
    assert [it.propositions for it in task_items(tasks["color"], src)] == [it.propositions for it in items]
    samples = first.samples(negatives=1)
    assert samples[0] == (first.propositions[first.gold], True) and samples[1][1] is False and len(samples) == 2
    assert len(first.samples(negatives=5)) == 3, "at most every other label"
    mc = task_items(tasks["plus"], src)[3]
    assert mc.propositions == ("Q: what is 3 plus one? A: 4", "Q: what is 3 plus one? A: 10") and mc.gold == 0


def test_splits_are_disjoint_stable_and_sized(tmp_path: Path) -> None:
    path = _tasks_file(tmp_path)
    src = DataSource(kind="teacher", tasks=["color", "plus"], templates=str(path), holdout=0.25)
    train = TeacherSource(src, "data.train[0]", "train").items()
    held = TeacherSource(src, "data.valid[0]", "heldout").items()
    for task in ("color", "plus"):
        a, b = {it.key for it in train[task]}, {it.key for it in held[task]}
        assert not a & b, "no item is both trained on and held out"
        assert len(a | b) == len(task_items(load_tasks(str(path))[task], src))
        assert 0.15 < len(b) / len(a | b) < 0.35
    again = TeacherSource(src, "x", "heldout").items()
    assert [it.key for it in again["color"]] == [it.key for it in held["color"]], "stable across runs"
    assert all(split_of(it, 0.25) == "heldout" for it in held["color"])


def test_loss_of_a_teacher_sample_is_the_label_token_cross_entropy(corpus: Path, tmp_path: Path) -> None:
    path = _tasks_file(tmp_path)
    cfg = data_cfg(tmp_path, [{"path": str(corpus / "txt" / "*.txt")},
                              {"kind": "teacher", "tasks": ["color"], "templates": str(path)}])
    prepared = prepare_data(cfg, progress=False)
    tok = prepared.tokenizer
    labels = torch.tensor([tok.special["label_pos"], tok.special["label_neg"]])
    loader = TokenLoader(prepared, "train", seq_len=64, batch_size=4, seed=0)
    loader._cdf[:] = [0.0, 1.0]  # draw only teacher samples
    x, y, mask = next(loader)
    assert torch.equal(mask.bool(), torch.isin(y, labels)), "the loss is taken on label tokens and nowhere else"
    assert bool((mask.sum(1) >= 1).all())
    torch.manual_seed(0)
    model = FLM(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, max_seq_len=64))
    with torch.no_grad():
        loss = model(x, targets=y, loss_weights=mask / mask.sum())
        logits = model(x)
    rows, cols = mask.nonzero(as_tuple=True)
    expected = F.cross_entropy(logits[rows, cols], y[rows, cols])
    assert math.isclose(float(loss), float(expected), rel_tol=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"templates": ["{text} [sep] {colour} is {answer}"]}, "names the field {colour}"),
        ({"items": [{"text": "a", "label": "purple"}]}, "'purple' is outside the set"),
        ({"items": []}, "holds no items"),
    ],
)
def test_bad_task_input_is_one_clear_error(tmp_path: Path, change: dict, message: str) -> None:
    path = _tasks_file(tmp_path, **change)
    src = DataSource(kind="teacher", tasks=["color"], templates=str(path))
    with pytest.raises(FlmError, match=message.replace("{", r"\{").replace("}", r"\}")) as e:
        TeacherSource(src, "data.train[1]", "train").items()
    assert "\n" not in str(e.value)


def test_cli_bad_input_exits_2(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    _tasks_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    base = (f'[model]\nvocab_size = 1024\n[data]\nprepared_dir = "prep"\nworkers = 1\n'
            f'[[data.valid]]\npath = "{corpus}/v.jsonl"\n[data.tokenizer]\nvocab_size = 512\n'
            f'[[data.train]]\npath = "{corpus}/c.jsonl"\n')
    cases = {
        "labels": ('[[data.train]]\nkind = "teacher"\ntasks = ["color"]\ntemplates = "tasks.toml"\n'
                   'labels = ["not one token at all", "label_neg"]\n', "is not a token of this tokenizer"),
        "weights": (base.replace('c.jsonl"\n', 'c.jsonl"\nweight = 0\n'), "every source has weight 0"),
        "no tasks": ('[[data.train]]\nkind = "teacher"\ntasks = []\n', "a teacher source has no items"),
    }
    for name, (extra, message) in cases.items():
        cfg = tmp_path / f"{name.replace(' ', '_')}.toml"
        cfg.write_text(extra if name == "weights" else base + extra)
        assert main(["data", "prepare", str(cfg), "-q"]) == 2, name
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (name, err)


def test_teacher_preview(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _tasks_file(tmp_path)
    assert main(["data", "teacher", "--tasks", "color,plus", "--templates", str(path), "-n", "1"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["task"] for x in lines] == ["color", "color", "plus", "plus"]
    assert [x["label"] for x in lines] == ["<|label_pos|>", "<|label_neg|>"] * 2


def test_teacher_config_keys_need_kind_teacher() -> None:
    with pytest.raises(ValueError, match='add kind = "teacher"'):
        DataConfig.model_validate({"train": [{"path": "x.txt", "tasks": ["sst2"]}]})


def test_word_in_paragraph_asks_about_the_paragraphs_own_tokens(tmp_path: Path) -> None:
    """The candidate word reads as the same tokens as inside the paragraph (a space before it), so the task
    is a token match a small model can learn; a quoted "word" was other tokens in 95% of the items."""
    rng = random.Random(0)
    words = [w for w in WORDS if len(w) >= 5] + ["".join(rng.choices("aeioubdklmnrst", k=7)) for _ in range(60)]
    paras = [" ".join(rng.choices(words, k=rng.randint(25, 60))) + "." for _ in range(80)]
    (tmp_path / "c.txt").write_text("\n\n".join(paras) + "\n")
    tok = train_bpe(paras, 300)
    src = DataSource(kind="teacher", tasks=["word_in_paragraph"], corpus=str(tmp_path / "c.txt"), items=60)
    task = load_tasks()["word_in_paragraph"]
    items = task_items(task, src)
    assert len(items) >= 40 and {len(it.propositions) for it in items} == {2}
    templates = set()
    for it in items:
        for j, prop in enumerate(it.propositions):
            para = next(p for p in paras if prop.startswith(p))
            word = prop[len(para):].rstrip(".").split()[-1]
            ids, inside = tok.encode(" " + word), tok.encode(para)
            found = any(inside[i : i + len(ids)] == ids for i in range(len(inside)))
            assert prop.endswith((" " + word, " " + word + ".")) and found == (j == it.gold), prop
            templates.add(prop[len(para):].replace(word, "W"))
    assert len(templates) == len(task.templates), "every template is used"
