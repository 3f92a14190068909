"""Packing: whole samples inside one window (too long ones dropped and counted); document masking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from flm.config import ModelConfig
from flm.data.loader import TokenLoader
from flm.data.packing import document_ends, document_ids, pack_whole
from flm.data.prepare import prepare_data
from flm.model import FLM

from .conftest import data_cfg


def test_pack_whole_greedy_and_dropping() -> None:
    ends = np.array([3, 10, 12, 30, 33])  # documents of 3, 7, 2, 18, 3 tokens
    starts, lengths, dropped = pack_whole(ends, 8)
    assert starts.tolist() == [0, 3, 10, 30] and lengths.tolist() == [3, 7, 2, 3] and dropped == 1
    starts, lengths, dropped = pack_whole(ends, 12)
    assert starts.tolist() == [0, 30] and lengths.tolist() == [12, 3] and dropped == 1
    assert document_ends([np.array([5, 0, 5]), np.array([7, 0])], eos_id=0).tolist() == [2, 5]


def test_no_sample_is_cut_across_windows(corpus: Path, tmp_path: Path) -> None:
    rows = [{"prompt": "word " * (3 + i % 11), "response": "reply " * (1 + i % 5)} for i in range(150)]
    rows += [{"prompt": "long " * 80, "response": "too long for a window"}] * 4
    (corpus / "inst.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = data_cfg(tmp_path, [{"path": str(corpus / "inst.jsonl"), "pack": "whole"}])
    prepared = prepare_data(cfg, progress=False)
    tok = prepared.tokenizer
    t = 48
    loader = TokenLoader(prepared, "train", seq_len=t, batch_size=1, shuffle=False)
    assert loader.dropped == [4], "the four samples longer than a window are dropped and counted"
    stream = np.concatenate([s.open(prepared.dtype)[0] for s in prepared.sources("train")[0].shards])
    ends = document_ends([stream], tok.eos_id)
    docs = [stream[a:b].tolist() for a, b in zip(np.r_[0, ends[:-1]], ends)]
    seen = []
    for _ in range(int(loader.windows[0])):
        x, y, m = next(loader)
        row = torch.cat([x[0, :1], y[0]]).tolist()
        n = len(row) - next(i for i, v in enumerate(reversed(row)) if v != tok.pad_id)  # drop the padding
        assert all(v == tok.pad_id for v in row[n:]) and bool((m[0, n - 1 :] == 0).all())
        cut = [0] + [i + 1 for i, v in enumerate(row[:n]) if v == tok.eos_id]
        assert cut[-1] == n, "a window ends at a document end"
        seen += [row[a:b] for a, b in zip(cut, cut[1:])]
    assert seen == [d for d in docs if len(d) <= t + 1], "every sample that fits appears once, whole, in order"


def test_loader_yields_document_ids_only_when_asked(corpus: Path, tmp_path: Path) -> None:
    """data.document_mask: the batch carries each position's document (a new one after every EOS), computed
    from the inputs it comes with; without it a batch is (inputs, targets, loss mask) as before."""
    rows = [{"text": f"note {i}: " + "word " * (3 + i % 7)} for i in range(200)]
    (corpus / "short.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepared = prepare_data(data_cfg(tmp_path, [{"path": str(corpus / "short.jsonl")}]), progress=False)
    plain = next(TokenLoader(prepared, "train", seq_len=32, batch_size=2, seed=1))
    x, y, m, docs = next(TokenLoader(prepared, "train", seq_len=32, batch_size=2, seed=1, document_ids=True))
    assert len(plain) == 3 and all(torch.equal(a, b) for a, b in zip(plain, (x, y, m)))
    assert torch.equal(docs, document_ids(x, prepared.tokenizer.eos_id)) and int(docs.max()) > 0


def _model() -> FLM:
    torch.manual_seed(0)
    return FLM(ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=64)).eval()


def test_document_mask_logits_alone_equal_packed() -> None:
    model, eos = _model(), 3
    a = torch.tensor([[10, 11, 12, 13, 14, 15, 16, eos]])
    b = torch.tensor([[20, 21, 22, eos, 30, 31, eos]])
    packed = torch.cat([b, a, torch.tensor([[40, 41]])], dim=1)
    with torch.no_grad():
        alone = model(a)
        together = model(packed, doc_ids=document_ids(packed, eos))
        plain = model(packed)
    got = together[:, b.shape[1] : b.shape[1] + a.shape[1]]
    assert torch.allclose(got, alone, atol=1e-5, rtol=1e-5), (got - alone).abs().max()
    assert not torch.allclose(plain[:, b.shape[1] : b.shape[1] + a.shape[1]], alone, atol=1e-3), (
        "without the mask the packed document sees the one before it")
    assert document_ids(packed, eos).tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3]]


def test_one_document_mask_is_plain_causal_attention() -> None:
    model = _model()
    x = torch.randint(4, 256, (2, 24))
    with torch.no_grad():
        assert torch.allclose(model(x, doc_ids=torch.zeros_like(x)), model(x), atol=1e-5)
        assert torch.equal(model(x, doc_ids=None), model(x))
