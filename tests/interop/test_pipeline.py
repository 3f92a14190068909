"""Imported and exported models in the rest of flm: `flm eval ppl` scores an exported folder as it scores the
checkpoint, and an imported checkpoint trains (`flm train --init`) and generates."""

from __future__ import annotations

import json

import pytest
import tomli_w

from flm.cli import main
from flm.config import tomllib
from flm.interop.hf_export import export_hf
from tests.conftest import tiny_config_dict

pytest.importorskip("transformers")


def _ppl(model, data, out) -> dict:
    assert main(["eval", "ppl", str(model), "--data", str(data), "--max-docs", "3", "--max-tokens", "400",
                 "--device", "cpu", "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    return json.loads(out.read_text())


def test_eval_of_export_equals_eval_of_checkpoint(make_ckpt, tmp_path, tiny_corpus):
    ckpt = make_ckpt()
    export_hf(ckpt, tmp_path / "hf")
    ours = _ppl(ckpt, tiny_corpus / "valid.jsonl", tmp_path / "a.json")
    theirs = _ppl(tmp_path / "hf", tiny_corpus / "valid.jsonl", tmp_path / "b.json")
    assert ours["tokens"] == theirs["tokens"] > 0
    assert abs(ours["loss"] - theirs["loss"]) <= 1e-5 * abs(ours["loss"])


def test_imported_checkpoint_trains_and_generates(make_neox, tmp_path, tiny_corpus, prepared_dir, capsys):
    src = make_neox(vocab_size=384)
    assert main(["import", "hf", str(src), str(tmp_path / "ckpt")]) == 0
    cfg = tiny_config_dict(tiny_corpus, prepared_dir, steps=2, eval_every=0)
    # the [model] table of the imported checkpoint's config.toml, and its tokenizer
    cfg["model"] = tomllib.loads((tmp_path / "ckpt" / "config.toml").read_text())["model"]
    cfg["data"]["tokenizer"] = {"kind": "file", "path": str(tmp_path / "ckpt" / "tokenizer.json")}
    (tmp_path / "run.toml").write_text(tomli_w.dumps(cfg))
    code = main(["train", str(tmp_path / "run.toml"), "--init", str(tmp_path / "ckpt"), "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    assert main(["generate", str(tmp_path / "ckpt"), "--prompt", "the king", "--max-new-tokens", "5"]) == 0
