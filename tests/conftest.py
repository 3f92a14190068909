"""Shared fixtures: a tiny corpus and a tiny run config, so training tests take seconds."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _corpus_lines(split: str, chars: int) -> list[str]:
    out, total = [], 0
    with gzip.open(REPO / "data" / "pd-english" / f"{split}.jsonl.gz", "rt") as f:
        for line in f:
            text = json.loads(line)["text"][:20000]
            out.append(json.dumps({"text": text}))
            total += len(text)
            if total >= chars:
                break
    return out


@pytest.fixture(scope="session", autouse=True)
def _cache_out_of_home(tmp_path_factory):
    """The measured-peak cache (flm.hardware) goes to a temporary folder, not the user's ~/.cache."""
    old = os.environ.get("FLM_CACHE_DIR")
    os.environ["FLM_CACHE_DIR"] = str(tmp_path_factory.mktemp("flm-cache"))
    yield
    if old is None:
        os.environ.pop("FLM_CACHE_DIR", None)
    else:
        os.environ["FLM_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """~200k characters of the bundled corpus (train) and ~40k (valid), as JSONL."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "train.jsonl").write_text("\n".join(_corpus_lines("train", 200_000)) + "\n")
    (root / "valid.jsonl").write_text("\n".join(_corpus_lines("valid", 40_000)) + "\n")
    return root


def tiny_config_dict(corpus: Path, prepared: Path, **train) -> dict:
    cfg = {
        "name": "tiny",
        "model": {"vocab_size": 512, "d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
        "data": {
            "train": [{"path": str(corpus / "train.jsonl")}],
            "valid": [{"path": str(corpus / "valid.jsonl")}],
            "tokenizer": {"kind": "bpe", "vocab_size": 512},
            "prepared_dir": str(prepared),
            "workers": 1,
        },
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
        "train": {"steps": 6, "batch_size": 4, "eval_every": 3, "eval_batches": 2, "log_every": 1,
                  "progress": False, "peak_flops": 1e11, "device": "cpu"},
    }
    cfg["train"].update(train)
    return cfg


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prepared")


@pytest.fixture
def tiny_cfg(tiny_corpus, prepared_dir):
    """Factory: tiny_cfg(**train_overrides) -> config dict."""
    return lambda **train: tiny_config_dict(tiny_corpus, prepared_dir, **train)
