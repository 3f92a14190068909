"""Tiny corpora in every format flm data reads, and a helper to prepare them quickly."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from flm.config import DataConfig

WORDS = (
    "the of and to in a is that for it as was with be by on not he I this are or his from at which but have "
    "an they you were her she there been one all we their has would when what if will so no more out up into "
    "time river ship whale captain king queen lord sea land city state nation law war peace bread wine"
).split()


def make_text(rng: random.Random, n_words: int) -> str:
    syllables = ("ka", "lo", "mi", "ren", "tas", "vu", "dor", "el", "qui", "sa", "po", "gri", "th", "an")
    words = [
        rng.choice(WORDS) if rng.random() < 0.8 else "".join(rng.choices(syllables, k=rng.randint(1, 4)))
        for _ in range(n_words)
    ]
    lines, line = [], []
    for w in words:
        line.append(w)
        if rng.random() < 0.08:
            lines.append(" ".join(line) + rng.choice([".", ",", "!", "?", ";"]))
            line = []
    lines.append(" ".join(line) + ".")
    return "\n".join(lines) + "\n"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """tmp/src: a.txt, b.txt (a glob), c.jsonl, d.jsonl.gz, v.jsonl (valid) — a few thousand words each."""
    rng = random.Random(0)
    src = tmp_path / "src"
    (src / "txt").mkdir(parents=True)
    for name in ("a", "b"):
        (src / "txt" / f"{name}.txt").write_text(make_text(rng, 1500) + "Ünïcødé ✓ 🙂 naïve café.\n")
    (src / "c.jsonl").write_text("".join(json.dumps({"text": make_text(rng, 400)}) + "\n" for _ in range(5)))
    with gzip.open(src / "d.jsonl.gz", "wt") as f:
        for _ in range(4):
            f.write(json.dumps({"text": make_text(rng, 300)}) + "\n")
    (src / "v.jsonl").write_text("".join(json.dumps({"text": make_text(rng, 300)}) + "\n" for _ in range(3)))
    return src


def data_cfg(tmp_path: Path, train: list[dict], valid: list[dict] | None = None, **kw) -> DataConfig:
    valid = [{"path": str(tmp_path / "src" / "v.jsonl")}] if valid is None else valid
    base = {
        "train": train,
        "valid": valid,
        "tokenizer": {"kind": "bpe", "vocab_size": 512},
        "prepared_dir": str(tmp_path / "prepared"),
        "workers": 1,
    }
    base.update(kw)
    return DataConfig.model_validate(base)
