"""The scorer: batched log-likelihoods and cached greedy decoding equal plain one-row references."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from flm.eval.models import FlmScorer, HFScorer, load_scorer
from flm.eval.scorer import GenRequest, Scorer, rolling_windows

from .helpers import ByteTokenizer, tiny_flm

PAIRS = [
    ("Hello", " world"),
    ("The cat sat", " on the mat"),
    ("", "abc"),
    ("x" * 150, " yy"),  # longer than the context: cut from the left
    ("trailing space ", "moves"),
    ("Question: 2+2?\nAnswer:", " 4"),
]


def reference_ll(scorer: Scorer, logits_fn, ctx: str, cont: str) -> float:
    """log P(cont | ctx) from one unbatched forward of the whole (truncated) sequence."""
    c, x = scorer.encode_pair(ctx, cont)
    whole = (c + x)[-(scorer.max_length + 1) :]
    with torch.no_grad():
        lp = F.log_softmax(logits_fn(torch.tensor([whole[:-1]]))[0].double(), -1)
    return sum(float(lp[len(whole) - 1 - len(x) + k, t]) for k, t in enumerate(x))


@pytest.fixture
def flm_scorer() -> FlmScorer:
    return FlmScorer(tiny_flm(max_seq_len=64, seed=1), ByteTokenizer(), batch_tokens=150, gen_batch=3)


def test_encode_pair_moves_trailing_spaces_and_handles_empty_context(flm_scorer):
    assert flm_scorer.encode_pair("a b ", "c") == (list(b"a b"), list(b" c"))
    assert flm_scorer.encode_pair("", "ab") == ([256], list(b"ab"))


def test_flm_loglikelihood_matches_unbatched_reference(flm_scorer):
    got = flm_scorer.loglikelihood(PAIRS)  # batch_tokens=150 forces several padded batches
    for (ctx, cont), (lp, _) in zip(PAIRS, got):
        assert lp == pytest.approx(reference_ll(flm_scorer, flm_scorer.model, ctx, cont), abs=1e-4)
    assert len({round(lp, 3) for lp, _ in got}) == len(PAIRS)  # not a constant


def test_is_greedy_true_exactly_for_the_greedy_continuation(flm_scorer):
    greedy = flm_scorer.generate_until([GenRequest("The cat", [], 4)])[0]
    assert flm_scorer.loglikelihood([("The cat", greedy)])[0][1] is True
    other = "Z" if greedy[0] != "Z" else "Q"
    assert flm_scorer.loglikelihood([("The cat", other + greedy[1:])])[0][1] is False


def test_flm_cached_batched_generation_equals_uncached_reference(flm_scorer):
    rng = random.Random(0)
    reqs = [
        GenRequest("".join(rng.choice("abcde fgh") for _ in range(rng.randint(1, 30))), [], rng.randint(1, 12))
        for _ in range(10)
    ]
    reqs += [GenRequest("x" * 70, [], 5)]  # prompt cut to fit max_length - max_new
    got = flm_scorer.generate_until(reqs)
    for r, g in zip(reqs, got):
        ids = Scorer._greedy_batch(
            flm_scorer,
            [flm_scorer._prompt_ids(r.context, r.max_new_tokens)],
            [r.max_new_tokens],
            lambda i, ids: False,
        )[0]
        assert g == flm_scorer.decode(ids)
        assert len(g.encode()) == r.max_new_tokens


def test_generation_stops_at_stop_strings():
    class Counter(FlmScorer):  # emits "ab\ncd..." after any prompt
        def __init__(self):
            super().__init__(tiny_flm(64), ByteTokenizer())

        def _greedy_batch(self, prompts, max_new, done):
            text = b"ab\ncd, ef"
            out = []
            for i in range(len(prompts)):
                ids = []
                for b in text[: max_new[i]]:
                    ids.append(b)
                    if done(i, ids):
                        break
                out.append(ids)
            return out

    s = Counter()
    got = s.generate_until(
        [
            GenRequest("p", ["\n"], 20),
            GenRequest("p", [","], 20),
            GenRequest("p", [], 3),
            GenRequest("p", ["zz", "cd"], 20),
        ]
    )
    assert got == ["ab", "ab\ncd", "ab\n", "ab\n"]


def test_rolling_windows_predict_every_token_once_with_full_context():
    rng = random.Random(0)
    for _ in range(200):
        n, max_len = rng.randint(1, 60), rng.randint(1, 16)
        ctx_len = rng.randint(1, max_len)
        tokens = [rng.randrange(1000) for _ in range(n)]
        wins = rolling_windows(tokens, -1, max_len, ctx_len)
        assert [t for _, tgt in wins for t in tgt] == tokens
        full = [-1, *tokens]
        pos = 0
        for inp, tgt in wins:
            # the model reads inp + tgt[:-1]: the tokens right before each target, at most max_len of them
            assert len(inp) + len(tgt) - 1 <= max_len
            assert inp + tgt[:-1] == full[pos + 1 - len(inp) : pos + len(tgt)]
            pos += len(tgt)
        if n > max_len:  # the last window reads a full context
            assert len(wins[-1][0]) + len(wins[-1][1]) - 1 == max_len


def test_rolling_windows_equal_lm_eval():
    utils = pytest.importorskip("lm_eval.utils")
    rng = random.Random(1)
    for _ in range(200):
        n, max_len = rng.randint(1, 60), rng.randint(1, 16)
        ctx_len = rng.randint(1, max_len)
        tokens = [rng.randrange(1000) for _ in range(n)]
        theirs = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(tokens, -1, max_len, ctx_len)]
        assert rolling_windows(tokens, -1, max_len, ctx_len) == [tuple(w) for w in theirs]


def test_loglikelihood_rolling_equals_sum_over_document(flm_scorer):
    text = "a short document about a cat and a mat"
    ids = flm_scorer.encode(text)
    whole = [flm_scorer.prefix_id, *ids]
    with torch.no_grad():
        lp = F.log_softmax(flm_scorer.model(torch.tensor([whole[:-1]]))[0].double(), -1)
    ref = sum(float(lp[k, t]) for k, t in enumerate(ids))
    assert flm_scorer.loglikelihood_rolling([text])[0] == pytest.approx(ref, abs=1e-4)


def test_flm_checkpoint_loads_as_scorer(flm_checkpoint):
    s = load_scorer(str(flm_checkpoint))
    assert isinstance(s, FlmScorer) and s.max_length == 96
    assert s.prefix_id == s.tok.eos_id
    ((lp, _),) = s.loglikelihood([("Mary went to the", " kitchen")])
    assert lp == pytest.approx(reference_ll(s, s.model, "Mary went to the", " kitchen"), abs=1e-4)
    assert load_scorer(str(flm_checkpoint), max_length=40).max_length == 40


def test_hf_scorer_scores_and_generates_like_references(hf_folder):
    s = load_scorer(str(hf_folder), batch_tokens=200, gen_batch=4)
    assert isinstance(s, HFScorer) and s.max_length == 128
    texts = [
        ("Mary went to the", " kitchen"),
        ("", "red"),
        ("Input: x y z\nOutput:", " x z"),
        ("tree " * 60, "cat"),
    ]
    fwd = lambda t: s.model(input_ids=t).logits  # noqa: E731
    for (ctx, cont), (lp, _) in zip(texts, s.loglikelihood(texts)):
        assert lp == pytest.approx(reference_ll(s, fwd, ctx, cont), abs=1e-4)
    reqs = [
        GenRequest("Mary went to the", [], 6),
        GenRequest("red", [], 9),
        GenRequest("Answer: a word", [], 4),
        GenRequest("x y z " * 5, [], 7),
        GenRequest("cat " * 40, [], 5),
    ]
    got = s.generate_until(reqs)  # one left-padded batch with the model's cache
    for r, g in zip(reqs, got):
        ids = Scorer._greedy_batch(
            s, [s._prompt_ids(r.context, r.max_new_tokens)], [r.max_new_tokens], lambda i, ids: False
        )[0]
        assert g == s._cut(ids, [])
    assert len(set(got)) > 1


def test_multi_stage_run_folder_resolves_to_last_stage(flm_checkpoint, tmp_path):
    import shutil

    from flm.eval.models import model_kind

    for stage, step in (("stage1", 5), ("stage2", 9), ("stage10", 3)):
        shutil.copytree(flm_checkpoint, tmp_path / "run" / stage / "checkpoints" / f"step_{step:08d}")
    (tmp_path / "run" / "stage11" / "checkpoints").mkdir(parents=True)  # a stage not started yet
    kind, path = model_kind(str(tmp_path / "run"))
    assert kind == "flm" and path == tmp_path / "run" / "stage10" / "checkpoints" / "step_00000003"
    assert load_scorer(str(tmp_path / "run")).source == str(path)
