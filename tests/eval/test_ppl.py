"""``flm eval ppl``: the numbers equal a plain per-document computation; the data readers and errors."""

from __future__ import annotations

import gzip
import json
import math

import pytest
import torch
import torch.nn.functional as F

from flm.errors import FlmError
from flm.eval.models import FlmScorer
from flm.eval.ppl import data_files, perplexity, read_documents

from .helpers import ByteTokenizer, tiny_flm

DOCS = ["The cat sat on the mat.", "A much longer document " * 12, "é ü — unicode counts as bytes", ""]


def _reference_nll(model, ids: list[int], prefix: int, max_len: int) -> float:
    """Disjoint windows of max_len predictions; the last window sees a full context (lm-eval's scheme)."""
    nll, done = 0.0, 0
    while done < len(ids):
        n = min(max_len, len(ids) - done)
        end = done + n
        ctx = ([prefix] + ids)[max(0, end - max_len) : end]  # the max_len tokens before each target
        with torch.no_grad():
            lp = F.log_softmax(model(torch.tensor([ctx]))[0].double(), -1)
        nll -= sum(float(lp[len(ctx) - n + k, t]) for k, t in enumerate(ids[done:end]))
        done = end
    return nll


def test_perplexity_matches_reference_and_definitions():
    model = tiny_flm(max_seq_len=64, seed=2)
    s = FlmScorer(model, ByteTokenizer(), batch_tokens=128)
    res = perplexity(s, DOCS, progress=False)
    ids = [list(d.encode()) for d in DOCS if d]
    nll = sum(_reference_nll(model, x, 256, 64) for x in ids)
    assert res.docs == 3 and res.tokens == sum(map(len, ids)) and res.bytes == sum(len(d.encode()) for d in DOCS)
    assert res.nll == pytest.approx(nll, rel=1e-5)
    assert res.loss == pytest.approx(nll / res.tokens, rel=1e-6)
    assert res.ppl == pytest.approx(math.exp(res.loss), rel=1e-6)
    assert res.bits_per_byte == pytest.approx(nll / math.log(2) / res.bytes, rel=1e-6)


def test_overlap_gives_more_context_and_limits_apply():
    model = tiny_flm(max_seq_len=16, seed=3)
    s = FlmScorer(model, ByteTokenizer())
    a = perplexity(s, DOCS, progress=False)
    b = perplexity(s, DOCS, overlap=8, progress=False)
    assert a.tokens == b.tokens and a.nll != b.nll
    assert perplexity(s, DOCS, max_docs=1, progress=False).tokens == len(DOCS[0])
    cut = perplexity(s, DOCS, max_tokens=30, progress=False)
    assert cut.tokens == 30 and cut.docs == 2 and cut.bytes == 30
    with pytest.raises(FlmError, match="overlap"):
        perplexity(s, DOCS, overlap=16, progress=False)
    with pytest.raises(FlmError, match="no text"):
        perplexity(s, ["", ""], progress=False)


def test_data_files_and_readers(tmp_path):
    (tmp_path / "a.txt").write_text("plain text file")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"body": "zipped"}) + "\n")
    files = data_files([str(tmp_path / "*.txt"), str(tmp_path / "b.jsonl")])
    assert list(read_documents(files)) == ["plain text file", "one", "two"]
    assert list(read_documents(data_files([str(tmp_path / "c.jsonl.gz")]), "body")) == ["zipped"]
    with pytest.raises(FlmError, match="no string field 'text'"):
        list(read_documents(data_files([str(tmp_path / "c.jsonl.gz")])))
    with pytest.raises(FlmError, match="no such file"):
        data_files([str(tmp_path / "missing*.jsonl")])
    (tmp_path / "d.csv").write_text("x")
    with pytest.raises(FlmError, match="unsupported file type"):
        data_files([str(tmp_path / "d.csv")])
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(FlmError, match=r"bad.jsonl:1: not valid JSON"):
        list(read_documents([tmp_path / "bad.jsonl"]))
