"""`flm data prepare` / `flm data stats` through flm.cli.main: output, and bad input -> one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flm.cli import main


def _config(path: Path, train: str, *, model_vocab: int = 1024, tokenizer: str = "vocab_size = 512") -> Path:
    path.write_text(
        f'[model]\nvocab_size = {model_vocab}\n\n[data]\nprepared_dir = "prep"\nworkers = 1\n'
        f'[[data.train]]\npath = "{train}"\n[[data.valid]]\npath = "src/v.jsonl"\n'
        f"[data.tokenizer]\n{tokenizer}\n"
    )
    return path


@pytest.fixture
def workdir(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the folder holding src/ (config paths are relative to the current directory)."""
    monkeypatch.chdir(corpus.parent)
    (corpus / "empty").mkdir()
    (corpus / "empty" / "a.txt").write_text("")
    (corpus / "bad.jsonl").write_text(json.dumps({"title": "no text"}) + "\n")
    (corpus / "garbage.json").write_text("this is not a tokenizer")
    return corpus.parent


def test_prepare_then_reuse_then_stats(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = _config(workdir / "run.toml", "src/txt/*.txt")
    assert main(["data", "prepare", str(cfg), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "built in" in out and "prep/" in out and "train:" in out and "valid:" in out
    assert main(["data", "prepare", str(cfg), "-q", "--set", "data.workers=2"]) == 0, "workers are not hashed"
    out = capsys.readouterr().out
    assert out.startswith("reused cached prep/")
    folder = next((workdir / "prep").iterdir())
    assert main(["data", "stats", str(workdir / "prep")]) == 0
    out = capsys.readouterr().out
    assert folder.name in out and "src/txt/*.txt" in out and "chars/token" in out
    assert main(["data", "stats", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hash"] == folder.name


@pytest.mark.parametrize(
    "train, extra, message",
    [
        ("src/missing.jsonl", {}, "file not found: src/missing.jsonl"),
        ("src/nothing/*.txt", {}, "matches no files"),
        ("src/empty/*.txt", {}, "the corpus is empty"),
        ("src/bad.jsonl", {}, 'bad.jsonl:1: no "text" field'),
        ("src/c.jsonl", {"model_vocab": 256}, "512 tokens but model.vocab_size is 256"),
        (
            "src/c.jsonl",
            {"tokenizer": 'kind = "file"\npath = "src/garbage.json"'},
            "cannot read tokenizer file",
        ),
        (
            "src/c.jsonl",
            {"tokenizer": 'kind = "file"\npath = "src/none.json"'},
            "file not found: src/none.json",
        ),
    ],
)
def test_bad_input_one_line_exit_2(
    workdir: Path, capsys: pytest.CaptureFixture, train: str, extra: dict, message: str
) -> None:
    cfg = _config(workdir / "bad.toml", train, **extra)
    assert main(["data", "prepare", str(cfg), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("flm data: error: "), err
    assert message in err


def test_stats_of_a_folder_without_data(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "stats", str(workdir / "src")]) == 2
    assert "holds no prepared data" in capsys.readouterr().err
