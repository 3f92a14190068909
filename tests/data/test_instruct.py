"""Instruction data: prompt/response and chat messages trained on the response only; the offline recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flm.cli import main
from flm.data.prepare import prepare_data
from flm.errors import FlmError

from .conftest import data_cfg
from .test_teacher import _tasks_file


def _supervised_text(prepared, i: int = 0) -> tuple[str, str]:
    src = prepared.sources("train")[i]
    tok, mask = (np.concatenate(a) for a in zip(*(s.open(prepared.dtype) for s in src.shards)))
    ids = tok.astype(np.int64)
    keep = [int(t) for t, m in zip(ids, mask) if m and t != prepared.tokenizer.eos_id]
    drop = [int(t) for t, m in zip(ids, mask) if not m]
    return prepared.tokenizer.decode(keep), prepared.tokenizer.decode(drop)


def test_response_and_assistant_turns_take_the_loss(corpus: Path, tmp_path: Path) -> None:
    rows = [
        {"prompt": "Name a color.", "response": " Red is one."},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"},
                      {"role": "assistant", "content": "Bye now. <|endoftext|>"}]},
    ]
    (corpus / "inst.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepared = prepare_data(data_cfg(tmp_path, [{"path": str(corpus / "inst.jsonl"), "pack": "whole"}]), progress=False)
    kept, dropped = _supervised_text(prepared)
    assert kept == " Red is one. Hello. Bye now. <|endoftext|>", "responses only; their text is plain text"
    assert dropped == "Name a color.System: Be brief.\n\nUser: Hi?\n\nAssistant:\n\nUser: Bye?\n\nAssistant:"
    src = prepared.sources("train")[0]
    assert src.pack == "whole" and src.documents == 2


def test_bad_chat_is_one_clear_error(corpus: Path, tmp_path: Path) -> None:
    (corpus / "bad.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "no reply"}]}) + "\n")
    with pytest.raises(FlmError, match="the last message must be the assistant's"):
        prepare_data(data_cfg(tmp_path, [{"path": str(corpus / "bad.jsonl")}]), progress=False)


def test_instruct_recipe_writes_training_items_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _tasks_file(tmp_path)
    out = tmp_path / "inst.jsonl"
    assert main(["data", "instruct", str(out), "--tasks", "plus", "--templates", str(path)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert 70 < len(lines) < 120, "the held-out share of the 120 items is left out"
    assert all(x["prompt"].startswith("Q: what is ") and x["prompt"].endswith("? A:") for x in lines)
    assert all(x["response"] == f" {int(x['prompt'].split()[3]) + 1}" for x in lines), "the true answer"
    before = out.read_text()
    assert main(["data", "instruct", str(out), "--tasks", "plus", "--templates", str(path)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == before, "an existing OUT is never replaced"
    assert main(["data", "instruct", str(out), "--tasks", "plus", "--templates", str(path), "--force"]) == 0
