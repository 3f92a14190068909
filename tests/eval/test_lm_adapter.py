"""The lm-evaluation-harness adapter agrees with flm's own scoring to 1e-4 and runs real lm-eval tasks."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from flm.eval.harness import run_harness  # noqa: E402
from flm.eval.lm_adapter import FlmLM  # noqa: E402
from flm.eval.models import load_scorer  # noqa: E402
from flm.eval.ppl import perplexity  # noqa: E402
from flm.eval.scorer import GenRequest  # noqa: E402

from .test_scorer import reference_ll  # noqa: E402

PAIRS = [
    ("Mary went to the", " kitchen"),
    ("", "red tree"),
    ("Input: x y z\nOutput:", " x z"),
    ("cat " * 50, "dog"),
    ("Question: what is it?\nAnswer:", " a word"),
]
DOCS = ["Mary went to the kitchen. John went to the garden.", "red green blue " * 30, "x"]


def _inst(kind: str, args: tuple, i: int = 0) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=i)


@pytest.fixture(scope="module")
def lm(flm_checkpoint) -> FlmLM:
    return get_model("flm").create_from_arg_string(
        f"path={flm_checkpoint},batch_tokens=256", {"batch_size": 1, "device": None}
    )


def test_registered_under_flm(lm):
    assert isinstance(lm, FlmLM) and lm.scorer.max_length == 96


def test_loglikelihood_equals_flm_scoring(lm):
    s = lm.scorer
    got = lm.loglikelihood([_inst("loglikelihood", p, i) for i, p in enumerate(PAIRS)], disable_tqdm=True)
    own = s.loglikelihood(PAIRS)
    for (ctx, cont), (lp, greedy), (lp_own, greedy_own) in zip(PAIRS, got, own):
        assert lp == pytest.approx(reference_ll(s, s.model, ctx, cont), abs=1e-4)
        assert lp == pytest.approx(lp_own, abs=1e-4) and greedy == greedy_own


def test_loglikelihood_rolling_equals_flm_ppl(lm):
    got = lm.loglikelihood_rolling(
        [_inst("loglikelihood_rolling", (d,), i) for i, d in enumerate(DOCS)], disable_tqdm=True
    )
    for doc, total in zip(DOCS, got):  # the second document spans several 96-token windows
        assert total == pytest.approx(-perplexity(lm.scorer, [doc], progress=False).nll, abs=1e-4)


def test_generate_until_is_greedy_and_honours_until(lm):
    s = lm.scorer
    ctx = "Input: x y z\nOutput:"
    free = s.generate_until([GenRequest(ctx, [], 12)])[0]
    got = lm.generate_until(
        [
            _inst("generate_until", (ctx, {"until": [free[3:5]], "max_gen_toks": 12})),
            _inst("generate_until", (ctx, {"max_gen_toks": 12, "do_sample": False})),
        ],
        disable_tqdm=True,
    )
    assert got == [free[: free.index(free[3:5])], free]
    with pytest.raises(Exception, match="greedily"):
        lm.generate_until([_inst("generate_until", (ctx, {"do_sample": True, "temperature": 0.7}))])


def _local_task(folder, rows: list[dict]) -> None:
    data = folder / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "toy.yaml").write_text(
        json.dumps(
            {
                "task": "toy_mc",
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"validation": str(data)}},
                "validation_split": "validation",
                "output_type": "multiple_choice",
                "doc_to_text": "query",
                "doc_to_choice": "choices",
                "doc_to_target": "gold",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            }
        )
    )


ROWS = [
    {"query": f"Question: where did {p} go?\nAnswer:", "choices": ["kitchen", "garden", "red"], "gold": g}
    for p, g in [("Mary", 0), ("John", 1), ("Emma", 2), ("Tom", 0), ("Anna", 1), ("Paul", 2)]
]


def test_simple_evaluate_accuracy_equals_own_argmax(lm, tmp_path):
    _local_task(tmp_path, ROWS)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=["toy_mc"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        bootstrap_iters=0,
        log_samples=False,
    )
    s = lm.scorer
    own = 0
    for r in ROWS:
        lps = [lp for lp, _ in s.loglikelihood([(r["query"], " " + c) for c in r["choices"]])]
        own += lps.index(max(lps)) == r["gold"]
    assert out["results"]["toy_mc"]["acc,none"] == pytest.approx(own / len(ROWS))


def test_harness_command_line_runs_flm_model(flm_checkpoint, tmp_path, capsys, monkeypatch):
    _local_task(tmp_path, ROWS)

    class OnlyIncluded(TaskManager):  # indexing lm-eval's thousands of built-in tasks takes most of a minute
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr("lm_eval.tasks.TaskManager", OnlyIncluded)
    rc = run_harness(
        [
            "--model",
            "flm",
            "--model_args",
            f"path={flm_checkpoint}",
            "--tasks",
            "toy_mc",
            "--include_path",
            str(tmp_path),
            "--limit",
            "4",
        ]
    )
    assert rc == 0
    assert "toy_mc" in capsys.readouterr().out


def test_hf_model_through_adapter(hf_folder):
    lm = FlmLM(path=str(hf_folder))
    s = lm.scorer
    got = lm.loglikelihood([_inst("loglikelihood", p) for p in PAIRS[:3]], disable_tqdm=True)
    fwd = lambda t: s.model(input_ids=t).logits  # noqa: E731
    for (ctx, cont), (lp, _) in zip(PAIRS, got):
        assert lp == pytest.approx(reference_ll(s, fwd, ctx, cont), abs=1e-4)
    assert load_scorer(str(hf_folder)).name == str(hf_folder)
