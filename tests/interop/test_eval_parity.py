"""`flm eval` on a checkpoint, `flm eval` on its `flm export hf` folder, and lm-eval's own `hf` model (HFLM) on
that folder score a small multiple-choice task the same: equal log-likelihoods, greedy flags and answers."""

from __future__ import annotations

import pytest

from flm.cli import main
from flm.eval.models import FlmScorer, HFScorer
from flm.eval.scorer import GenRequest, Scorer
from tests.interop.conftest import TEXTS

pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

# A tiny multiple-choice task: (context, choices). It covers an empty context (scored after the prefix
# token), a context with trailing spaces (moved into the continuation), and one longer than the model's
# 64 positions (cut from the left): the three places where the scorers' conventions could part.
DOCS = [
    ("the king of spain is", [" 7", " 14", " 21", " 28"]),
    ("the river of stone is", [" 3 and", " 10 and the", " cat"]),
    ("the cat sat on the ", ["mat", "king", "river of stone"]),
    ("", ["the cat sat", "the king of spain", "the river"]),
    (" ".join(TEXTS[:12]) + " the king of", [" spain", " stone", " mat 42."]),
]


def _task(scorer: Scorer) -> list[tuple[str, list[str]]]:
    """DOCS, with flm's own one-token greedy continuation of the first two contexts as an extra choice (so
    some continuations are greedy and `is_greedy` is compared too)."""
    docs = [(ctx, list(choices)) for ctx, choices in DOCS]
    for ctx, choices in docs[:2]:
        choices.append(scorer.generate_until([GenRequest(ctx, [], 1)])[0])
    return docs


def _answers(docs: list[tuple[str, list[str]]], scores: list[tuple[float, bool]]) -> list[int]:
    """The chosen answer of each doc (argmax log-likelihood), as lm-eval's `acc` picks it."""
    out, start = [], 0
    for _, choices in docs:
        lls = [ll for ll, _ in scores[start : start + len(choices)]]
        out.append(max(range(len(lls)), key=lls.__getitem__))
        start += len(choices)
    return out


def test_flm_eval_and_lm_eval_hf_agree_on_export(make_ckpt, tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from flm.eval.lm_adapter import FlmLM

    ckpt = make_ckpt()
    assert main(["export", "hf", str(ckpt), str(tmp_path / "hf")]) == 0
    flm_ckpt = FlmLM(path=str(ckpt), device="cpu", progress=False)  # what `flm eval bench` scores with
    flm_hf = FlmLM(path=str(tmp_path / "hf"), device="cpu", progress=False)
    lm_eval_hf = HFLM(pretrained=str(tmp_path / "hf"), device="cpu", dtype="float32", batch_size=4)
    assert isinstance(flm_ckpt.scorer, FlmScorer) and isinstance(flm_hf.scorer, HFScorer)
    assert lm_eval_hf.max_length == flm_ckpt.scorer.max_length == 64

    docs = _task(flm_ckpt.scorer)
    pairs = [(ctx, choice) for ctx, choices in docs for choice in choices]
    assert len(flm_ckpt.scorer.encode(DOCS[-1][0])) > 64  # the last doc really is cut
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    ours = flm_ckpt.loglikelihood(requests)
    via_export = flm_hf.loglikelihood(requests)
    theirs = lm_eval_hf.loglikelihood(requests, disable_tqdm=True)

    assert len(ours) == len(via_export) == len(theirs) == len(pairs)
    for name, other in (("flm eval on the export", via_export), ("lm-eval hf on the export", theirs)):
        for pair, (ll, greedy), (ll2, greedy2) in zip(pairs, ours, other):
            assert ll2 == pytest.approx(ll, abs=1e-4), (name, pair)
            assert greedy2 == greedy, (name, pair)
    assert any(greedy for _, greedy in ours) and not all(greedy for _, greedy in ours)
    assert _answers(docs, ours) == _answers(docs, via_export) == _answers(docs, theirs)
