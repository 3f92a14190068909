"""TokenLoader: determinism, exact resume, rank sharding, epochs, weights, loss mask, validation stream."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from flm.data.loader import TokenLoader, uniform_hash
from flm.data.prepare import PreparedData, prepare_data
from flm.errors import FlmError

from .conftest import data_cfg, make_text

T = 16


@pytest.fixture
def mixed(corpus: Path, tmp_path: Path) -> PreparedData:
    """Three weighted sources plus teacher-signal samples (prompt/completion, loss on the label only)."""
    rng = random.Random(4)
    sup = corpus / "sup.jsonl"
    sup.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": make_text(rng, 30),
                    "completion": rng.choice(["<|label_pos|>", "<|label_neg|>"]),
                    "eos_loss": False,
                }
            )
            + "\n"
            for _ in range(60)
        )
    )
    cfg = data_cfg(
        tmp_path,
        [
            {"path": str(corpus / "txt" / "*.txt"), "weight": 3.0},
            {"path": str(corpus / "c.jsonl"), "weight": 1.0},
            {"path": str(corpus / "d.jsonl.gz"), "weight": 1.0},
            {"path": str(sup), "weight": 1.0},
        ],
    )
    return prepare_data(cfg, progress=False)


def _take(loader: TokenLoader, n: int) -> list[tuple[torch.Tensor, ...]]:
    return [next(loader) for _ in range(n)]


def _same(a: list[tuple[torch.Tensor, ...]], b: list[tuple[torch.Tensor, ...]]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


def test_batch_shapes_and_shift(mixed: PreparedData) -> None:
    x, y, m = next(TokenLoader(mixed, "train", seq_len=T, batch_size=4))
    assert x.shape == y.shape == m.shape == (4, T)
    assert x.dtype == y.dtype == torch.int64 and m.dtype == torch.float32
    assert torch.equal(x[:, 1:], y[:, :-1]), "targets are the inputs shifted by one"
    assert int(x.max()) < mixed.vocab_size and int(x.min()) >= 0


def test_deterministic_and_seed_dependent(mixed: PreparedData) -> None:
    a = _take(TokenLoader(mixed, "train", seq_len=T, batch_size=4, seed=3), 12)
    b = _take(TokenLoader(mixed, "train", seq_len=T, batch_size=4, seed=3), 12)
    c = _take(TokenLoader(mixed, "train", seq_len=T, batch_size=4, seed=4), 12)
    assert _same(a, b)
    assert not _same(a, c)


def test_exact_resume_position(mixed: PreparedData) -> None:
    ref = TokenLoader(mixed, "train", seq_len=T, batch_size=4, seed=1)
    _take(ref, 7)
    state = json.loads(json.dumps(ref.state_dict()))  # survives a JSON checkpoint
    expected = _take(ref, 5)
    resumed = TokenLoader(mixed, "train", seq_len=T, batch_size=4, seed=1)
    resumed.load_state_dict(state)
    assert _same(_take(resumed, 5), expected)
    assert resumed.state_dict() == ref.state_dict()


def test_resume_across_epochs_and_a_batch_size_change(corpus: Path, tmp_path: Path) -> None:
    prepared = prepare_data(data_cfg(tmp_path, [{"path": str(corpus / "d.jsonl.gz")}]), progress=False)
    ref = TokenLoader(prepared, "train", seq_len=T, batch_size=8, seed=2)
    per_epoch = int(ref.windows[0])
    _take(ref, per_epoch // 8 + 3)  # past the first epoch boundary
    assert ref.epochs()[0] > 1
    state = ref.state_dict()
    rows = torch.cat([x for x, _, _ in _take(ref, 4)])
    small = TokenLoader(prepared, "train", seq_len=T, batch_size=2, seed=2)
    small.load_state_dict(state)
    assert torch.equal(torch.cat([x for x, _, _ in _take(small, 16)]), rows), (
        "state counts sequences, not steps"
    )


def test_two_ranks_see_what_one_rank_with_double_batch_sees(mixed: PreparedData) -> None:
    one = _take(TokenLoader(mixed, "train", seq_len=T, batch_size=6, seed=5), 8)
    r0 = TokenLoader(mixed, "train", seq_len=T, batch_size=3, rank=0, world_size=2, seed=5)
    r1 = TokenLoader(mixed, "train", seq_len=T, batch_size=3, rank=1, world_size=2, seed=5)
    for step in range(8):
        a, b = next(r0), next(r1)
        for k in range(3):
            assert torch.equal(torch.cat([a[k], b[k]]), one[step][k])
    assert r0.state_dict() == r1.state_dict(), "the loader state is global: any rank's copy resumes all"


def test_epochs_cover_every_window_once_then_reshuffle(corpus: Path, tmp_path: Path) -> None:
    prepared = prepare_data(data_cfg(tmp_path, [{"path": str(corpus / "c.jsonl")}]), progress=False)
    loader = TokenLoader(prepared, "train", seq_len=T, batch_size=1, seed=0)
    n = int(loader.windows[0])
    stream = np.concatenate([s.open(prepared.dtype)[0] for s in prepared.sources("train")[0].shards])
    starts = []
    for _ in range(2 * n):
        x, y, _ = next(loader)
        row = x[0].numpy()
        hits = [w for w in range(n) if np.array_equal(stream[w * T : w * T + T], row)]
        assert len(hits) >= 1
        starts.append(hits[0])
        assert y[0, -1].item() == stream[hits[0] * T + T]
    first, second = starts[:n], starts[n:]
    assert sorted(first) == sorted(second) == list(range(n)), "each epoch visits every window exactly once"
    assert first != second, "the order is reshuffled each epoch"
    assert first != sorted(first), "training order is shuffled"


def test_sources_are_mixed_by_weight(mixed: PreparedData) -> None:
    loader = TokenLoader(mixed, "train", seq_len=T, batch_size=50, seed=0)
    _take(loader, 40)
    share = np.array(loader.state_dict()["counts"]) / 2000
    assert np.allclose(share, [0.5, 1 / 6, 1 / 6, 1 / 6], atol=0.03)
    u = uniform_hash(7, np.arange(10000))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


def test_loss_mask_is_zero_on_prompt_targets(mixed: PreparedData) -> None:
    tok = mixed.tokenizer
    labels = {tok.special["label_pos"], tok.special["label_neg"]}
    sup = TokenLoader(mixed, "train", seq_len=T, batch_size=64, seed=0)
    sup._cdf = np.array([0.0, 0.0, 0.0, 1.0])  # draw only from the prompt/completion source
    x, y, m = next(sup)
    assert 0 < m.mean() < 0.2, "most targets of a teacher-signal sample are unsupervised"
    is_label = torch.isin(y, torch.tensor(sorted(labels)))
    assert torch.equal(m.bool(), is_label), "the loss is taken on the label tokens and nowhere else"
    plain = TokenLoader(mixed, "train", seq_len=T, batch_size=64, seed=0)
    plain._cdf = np.array([1.0, 1.0, 1.0, 1.0])
    assert torch.all(next(plain)[2] == 1), "plain text is supervised everywhere"


def test_valid_stream_is_fixed_and_sequential(mixed: PreparedData) -> None:
    v = TokenLoader(mixed, "valid", seq_len=T, batch_size=2)
    first = list(v.valid_batches(3))
    assert _same(first, list(v.valid_batches(3)))
    assert _same(first, _take(TokenLoader(mixed, "valid", seq_len=T, batch_size=2), 3))
    stream = np.concatenate([s.open(mixed.dtype)[0] for s in mixed.sources("valid")[0].shards])
    flat = torch.cat([x for x, _, _ in first]).numpy()
    assert np.array_equal(flat.reshape(-1), stream[: 6 * T]), "valid windows are in corpus order"
    halves = [
        list(TokenLoader(mixed, "valid", seq_len=T, batch_size=1, rank=r, world_size=2).valid_batches(3))
        for r in (0, 1)
    ]
    for i in range(3):
        assert torch.equal(torch.cat([halves[0][i][0], halves[1][i][0]]), first[i][0])


def test_loader_errors(mixed: PreparedData) -> None:
    with pytest.raises(FlmError, match="fewer than seq_len"):
        TokenLoader(mixed, "valid", seq_len=10**6, batch_size=1)
    loader = TokenLoader(mixed, "train", seq_len=T, batch_size=2)
    state = loader.state_dict()
    with pytest.raises(FlmError, match="seq_len"):
        TokenLoader(mixed, "train", seq_len=T * 2, batch_size=2).load_state_dict(state)
    valid = TokenLoader(mixed, "valid", seq_len=T, batch_size=2)
    with pytest.raises(FlmError, match="4 data sources, the config has 1"):
        valid.load_state_dict(state | {"split": "valid", "data_hash": valid.data_hash})
    with pytest.raises(ValueError):
        TokenLoader(mixed, "train", seq_len=T, batch_size=2, rank=2, world_size=2)
    # a resume on other data or another seed would silently read another stream: refused
    with pytest.raises(FlmError, match="train.seed 0, this run uses 3"):
        TokenLoader(mixed, "train", seq_len=T, batch_size=2, seed=3).load_state_dict(state)
    with pytest.raises(FlmError, match="prepared data 0123456789ab.*tokenizer changed"):
        loader.load_state_dict(state | {"data_hash": "0123456789abcdef"})
    assert loader.continues(state)
    assert not TokenLoader(mixed, "train", seq_len=T, batch_size=2, seed=3).continues(state)
    assert not loader.continues(state | {"data_hash": "0123456789abcdef"})


def test_no_valid_sources_is_a_clear_error(corpus: Path, tmp_path: Path) -> None:
    prepared = prepare_data(data_cfg(tmp_path, [{"path": str(corpus / "c.jsonl")}], valid=[]), progress=False)
    assert prepared.valid_tokens == 0
    with pytest.raises(FlmError, match=r"no valid data.*\[\[data.valid\]\]"):
        TokenLoader(prepared, "valid", seq_len=T, batch_size=1)
    assert next(TokenLoader(prepared, "train", seq_len=T, batch_size=4))[0].shape == (4, T)


def test_resume_on_a_different_world_size(mixed: PreparedData) -> None:
    """A checkpoint written by 2 ranks resumes on 1 rank (and back) at the same global position."""
    ranks = [
        TokenLoader(mixed, "train", seq_len=T, batch_size=2, rank=r, world_size=2, seed=9) for r in (0, 1)
    ]
    for _ in range(5):
        for loader in ranks:
            next(loader)
    single = TokenLoader(mixed, "train", seq_len=T, batch_size=4, seed=9)
    single.load_state_dict(ranks[1].state_dict())
    for _ in range(3):
        a, b = next(ranks[0]), next(ranks[1])
        assert torch.equal(torch.cat([a[0], b[0]]), next(single)[0])
