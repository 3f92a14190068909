"""``flm eval ...`` end to end, and one clear error line for every way a model or task can be wrong."""

from __future__ import annotations

import json
import shutil

import pytest

from flm.cli import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("flm eval: error: ")
    return err[0]


def test_iq_ppl_and_list_on_a_checkpoint(flm_checkpoint, tmp_path, capsys):
    out, samples = tmp_path / "iq.json", tmp_path / "samples.jsonl"
    assert (
        main(
            [
                "eval",
                "iq",
                str(flm_checkpoint),
                "--limit",
                "2",
                "--tasks",
                "counting,symbol_mapping",
                "--sources",
                "synthetic",
                "--out",
                str(out),
                "--samples",
                str(samples),
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert set(report["subtasks"]) == {"counting", "symbol_mapping"} and report["limit"] == 2
    assert len(samples.read_text().splitlines()) == 4
    assert "passing rate" in capsys.readouterr().out

    data = tmp_path / "held.jsonl"
    data.write_text(json.dumps({"text": "Mary went to the kitchen."}) + "\n" + json.dumps({"text": "red tree"}) + "\n")
    ppl = tmp_path / "ppl.json"
    assert main(["eval", "ppl", str(flm_checkpoint), "--data", str(data), "--out", str(ppl), "--no-progress"]) == 0
    r = json.loads(ppl.read_text())
    assert r["docs"] == 2 and r["bytes"] == len("Mary went to the kitchen.") + len("red tree")
    assert r["ppl"] > 1 and r["bits_per_byte"] > 0

    assert main(["eval", "list"]) == 0
    assert "two_supporting_facts" in capsys.readouterr().out


@pytest.mark.parametrize("cmd", [["iq"], ["ppl", "--data", "x.jsonl"], ["bench", "--tasks", "arc_easy"]])
def test_missing_model_is_one_line(cmd, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLM_OLMO_EVAL_DATA", str(tmp_path))
    (tmp_path / "x.jsonl").write_text('{"text": "a"}\n')
    monkeypatch.chdir(tmp_path)
    argv = ["eval", cmd[0], str(tmp_path / "nowhere"), *cmd[1:]]
    assert main(argv) == 2
    assert "model not found" in _error_line(capsys)


def test_broken_checkpoint_is_one_line(flm_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(flm_checkpoint, bad)
    size = (bad / "model.safetensors").stat().st_size
    (bad / "model.safetensors").write_bytes(b"\0" * size)  # right size, garbage inside
    assert main(["eval", "iq", str(bad), "--limit", "1", "--tasks", "counting"]) == 2
    assert "bad" in _error_line(capsys)
    (bad / "model.safetensors").write_bytes(b"\0" * 10)  # truncated
    assert main(["eval", "iq", str(bad), "--limit", "1"]) == 2
    _error_line(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "iq", str(empty)]) == 2
    assert "not a model folder" in _error_line(capsys)


def test_broken_hf_folder_is_one_line(hf_folder, tmp_path, capsys):
    bad = tmp_path / "hf"
    shutil.copytree(hf_folder, bad)
    (bad / "config.json").write_text('{"model_type": "no_such_architecture"}')
    assert main(["eval", "iq", str(bad), "--limit", "1"]) == 2
    assert "cannot load as a Hugging Face causal LM" in _error_line(capsys)
    (tmp_path / "model.gguf").write_bytes(b"not a gguf")
    assert main(["eval", "iq", str(tmp_path / "model.gguf"), "--limit", "1"]) == 2
    _error_line(capsys)


def test_unknown_tasks_are_one_line(flm_checkpoint, tmp_path, capsys, monkeypatch):
    assert main(["eval", "iq", str(flm_checkpoint), "--tasks", "counting,telepathy"]) == 2
    assert "unknown IQ task 'telepathy'" in _error_line(capsys)
    assert main(["eval", "iq", str(flm_checkpoint), "--sources", "imdb"]) == 2
    assert "unknown symbol-mapping source" in _error_line(capsys)
    monkeypatch.setenv("FLM_OLMO_EVAL_DATA", str(tmp_path))
    assert main(["eval", "bench", str(flm_checkpoint), "--tasks", "truthfulqa"]) == 2
    assert "unknown benchmark task 'truthfulqa'; known: arc_easy" in _error_line(capsys)
