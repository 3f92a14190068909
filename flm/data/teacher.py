"""Teacher signals (FreeLM, FLM-101B's unified objective): labelled items -> propositions + a label token.

A task (``teacher_tasks.toml``, extendable with a user file) turns each item into one proposition per
candidate answer with a template chosen from a hash of the item; the candidate that is the item's answer
gives a true proposition, the others false ones. A training sample is ``<proposition>`` followed by the true
or the false label token, and its loss is taken on that label token alone (prepare writes it as an
unsupervised prompt plus a one-token completion whose EOS carries no loss).

Every item has a stable key (a hash of its task and content): it decides the item's split (held out when
the key falls below ``holdout``), its template and its false propositions, so all three are the same in
every run and on every machine. Held-out items are never trained on; ``flm eval teacher`` scores them.
"""

from __future__ import annotations

import hashlib
import json
import string
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from flm.config import DataSource
from flm.data.teacher_rows import Item, file_items, olmo_items, procedural_items
from flm.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from flm.errors import FlmError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTIN = Path(__file__).with_name("teacher_tasks.toml")
KINDS = ("classification", "multiple_choice", "yes_no", "sentence_pair")
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    data: str  # olmo:<name> | procedural:<name> | a .jsonl path
    labels: tuple[str, ...]  # empty for multiple_choice
    templates: tuple[str, ...]
    where: str  # "teacher_tasks.toml [tasks.sst2]", for error messages
    base: Path  # folder that a relative data path is read from


@dataclass(frozen=True)
class TeacherItem:
    """One rendered item: a proposition per candidate; ``gold`` is the true one."""

    task: str
    key: str
    propositions: tuple[str, ...]
    gold: int

    def samples(self, negatives: int) -> list[tuple[str, bool]]:
        """The true proposition and ``negatives`` false ones (picked by the item's hash)."""
        others = (j for j in range(len(self.propositions)) if j != self.gold)
        false = sorted(others, key=lambda j: _h(self.key, f"n{j}"))
        return [(self.propositions[self.gold], True)] + [(self.propositions[j], False) for j in false[:negatives]]


def _h(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big")


def item_key(task: str, item: Item) -> str:
    return hashlib.sha256(json.dumps([task, item], sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def split_of(item: TeacherItem, holdout: float) -> str:
    """'heldout' for a stable ``holdout`` share of every task's items, else 'train'."""
    return "heldout" if _h(item.key, "split") / 2.0**64 < holdout else "train"


# ---------------------------------------------------------------------------------------------- task files


def _read_task_file(path: Path, where: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FlmError(f"{where}: templates file not found: {path}; give a .toml or .json file of [tasks.*]") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise FlmError(f"{where}: {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from None
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise FlmError(
            f"{where}: {path} defines no tasks; add tables like [tasks.my_task] kind = ..., templates = [...]"
        )
    return tasks


def _task(name: str, spec: Any, where: str, base: Path) -> Task:
    if not isinstance(spec, dict):
        raise FlmError(f"{where}: task {name!r} must be a table with kind, data and templates")
    unknown = set(spec) - {"kind", "data", "labels", "templates"}
    if unknown:
        raise FlmError(f"{where}: unknown key {sorted(unknown)[0]!r}; a task has kind, data, labels, templates")
    kind, data, templates = spec.get("kind"), spec.get("data"), spec.get("templates")
    if kind not in KINDS:
        raise FlmError(f"{where}: kind = {kind!r}; use one of {', '.join(KINDS)}")
    if not isinstance(data, str) or not data:
        raise FlmError(f'{where}: data must name the items: "olmo:<split>", "procedural:<task>" or a .jsonl path')
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise FlmError(f'{where}: templates must be a non-empty list of strings with an "{{answer}}" field')
    for t in templates:
        fields = _fields(t, where)
        if "answer" not in fields:
            raise FlmError(f"{where}: template {t[:40]!r}... has no {{answer}} field: it would assert nothing")
    labels = spec.get("labels", ["no", "yes"] if kind == "yes_no" else [])
    if kind == "multiple_choice":
        if "labels" in spec:
            raise FlmError(f"{where}: a multiple_choice task takes its options from each item's choices; drop labels")
    elif not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise FlmError(f'{where}: labels must list two or more strings, e.g. labels = ["negative", "positive"]')
    return Task(name, kind, data, tuple(labels), tuple(templates), where, base)


def _fields(template: str, where: str) -> set[str]:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise FlmError(
            f"{where}: template {template[:40]!r}... is malformed ({e}); write {{{{ for a literal brace"
        ) from None
    if "" in fields or any(not f.isidentifier() for f in fields):
        raise FlmError(f"{where}: template {template[:40]!r}... has a field that is not a plain name; write {{name}}")
    return fields


@lru_cache(maxsize=8)
def load_tasks(extra: str | None = None) -> dict[str, Task]:
    """The built-in tasks, extended (or overridden, by name) by the tasks of the file ``extra``."""
    tasks = {n: _task(n, s, f"{BUILTIN.name} [tasks.{n}]", BUILTIN.parent)
             for n, s in _read_task_file(BUILTIN, "flm").items()}
    if extra:
        p = Path(extra)
        for n, s in _read_task_file(p, "templates").items():
            tasks[n] = _task(n, s, f"{p} [tasks.{n}]", p.parent)
    return tasks


# ---------------------------------------------------------------------------------------------- items


def _answer_index(task: Task, item: Item, options: list[str], key: str, loc: str) -> int:
    value = item.get(key)
    if isinstance(value, bool) and task.kind == "yes_no":
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(options):
        return value
    if isinstance(value, str) and value in options:
        return options.index(value)
    if value is None:
        raise FlmError(f"{loc} has no {key!r} field; give the answer as one of {options} or its index")
    raise FlmError(f"{loc}: {key} {value!r} is outside the set {options}; use one of them or its index")


def _options(task: Task, item: Item, loc: str) -> tuple[list[str], int]:
    if task.kind == "multiple_choice":
        options = item.get("choices")
        if not isinstance(options, list) or len(options) < 2:
            raise FlmError(f"{loc}: a multiple_choice item needs \"choices\", a list of two or more answers")
        options = [str(o) for o in options]
        return options, _answer_index(task, item, options, "answer", loc)
    options = list(task.labels)
    return options, _answer_index(task, item, options, "label", loc)


def render(task: Task, item: Item, loc: str) -> TeacherItem:
    """An item's propositions, one per option, with the template the item's key picks."""
    options, gold = _options(task, item, loc)
    key = item_key(task.name, item)
    template = task.templates[_h(key, "template") % len(task.templates)]
    values = {k: v for k, v in item.items() if k not in ("choices", "answer", "label")}
    missing = sorted(_fields(template, task.where) - set(values) - {"answer"})
    if missing:
        raise FlmError(
            f"{task.where}: template {template[:40]!r}... names the field {{{missing[0]}}}, which {loc} lacks "
            f"(it has {', '.join(sorted(values)) or 'no fields'}); fix the template or the items"
        )
    props = tuple(template.format(**{**values, "answer": o}) for o in options)
    return TeacherItem(task.name, key, props, gold)


def instruction_pairs(task: Task, source: DataSource, root: Path = Path(".")) -> Iterator[tuple[str, str]]:
    """(prompt, response) of every training item: the item's template cut at "{answer}", the true answer
    and the rest of the template as the response (the held-out items stay unseen, as for teacher signals)."""
    for i, raw in enumerate(_raw_items(task, source, root)):
        item = render(task, raw, f"item {i + 1} of {task.data}")
        if split_of(item, source.holdout) != "train":
            continue
        options, gold = _options(task, raw, "")
        template = task.templates[_h(item.key, "template") % len(task.templates)]
        head, _, tail = template.partition("{answer}")
        values = {k: v for k, v in raw.items() if k not in ("choices", "answer", "label")}
        yield head.format(**values).strip(), " " + options[gold] + tail.format(**values, answer=options[gold])


def _raw_items(task: Task, source: DataSource, root: Path) -> list[Item]:
    prefix, _, name = task.data.partition(":")
    if prefix == "olmo":
        return olmo_items(name, task.where)
    if prefix == "procedural":
        corpus = Path(source.corpus)
        return procedural_items(name, corpus if corpus.is_absolute() else root / corpus, source.items, task.where)
    path = Path(task.data)
    return file_items(path if path.is_absolute() else task.base / path, task.where)


def task_items(task: Task, source: DataSource, root: Path = Path(".")) -> list[TeacherItem]:
    """Every item of ``task`` (both splits), rendered."""
    raw = _raw_items(task, source, root)
    if not raw:
        raise FlmError(f"{task.where}: {task.data} holds no items; point data at labelled items")
    return [render(task, item, f"item {i + 1} of {task.data}") for i, item in enumerate(raw)]


# ---------------------------------------------------------------------------------------------- sources


def resolve_labels(
    labels: tuple[str, str], tokenizer: Tokenizer, where: str
) -> tuple[tuple[str, str], tuple[int, int]]:
    """The (true, false) label tokens as text and ids: a name of the special-token registry (label_pos,
    label_neg) or a string the tokenizer reads as exactly one token."""
    texts, ids = [], []
    for label in labels:
        if label in SPECIAL_TOKENS and label in tokenizer.special:
            texts.append(SPECIAL_TOKENS[label])
            ids.append(tokenizer.special[label])
            continue
        enc = tokenizer.encode(label, allow_special=True)
        if len(enc) != 1:
            raise FlmError(
                f"{where}.labels: {label!r} is not a token of this tokenizer (it reads as {len(enc)} tokens); use "
                f"the reserved label_pos/label_neg, or a string the tokenizer holds as one token"
            )
        texts.append(label)
        ids.append(enc[0])
    if ids[0] == ids[1]:
        raise FlmError(f"{where}.labels: both labels are token {ids[0]}; give two different tokens")
    return (texts[0], texts[1]), (ids[0], ids[1])


class TeacherSource:
    """A ``kind = "teacher"`` data source: its tasks' items of one split, as (prompt, label text) samples."""

    def __init__(self, source: DataSource, where: str, split: str, root: Path = Path(".")) -> None:
        self.source, self.where, self.root = source, where, root
        self.split = source.split or split
        tasks = load_tasks(str(root / source.templates) if source.templates else None)
        names = source.tasks if source.tasks is not None else list(tasks)
        unknown = [n for n in names if n not in tasks]
        if unknown:
            raise FlmError(f"{where}.tasks: unknown task {unknown[0]!r}; known: {', '.join(tasks)} (or add it to "
                           f"a templates file)")
        if not names:
            raise FlmError(f"{where}.tasks is empty: a teacher source has no items; name one or more tasks")
        self.tasks = [tasks[n] for n in names]
        self._items: dict[str, list[TeacherItem]] | None = None

    def items(self) -> dict[str, list[TeacherItem]]:
        """Task -> its items of this source's split; a task left with none is an error."""
        if self._items is not None:
            return self._items
        out = {}
        for task in self.tasks:
            items = task_items(task, self.source, self.root)
            picked = [it for it in items if split_of(it, self.source.holdout) == self.split]
            if not picked:
                raise FlmError(f"{self.where}: teacher task {task.name!r} has no {self.split} items; give it more "
                               f"items (or change {self.where}.holdout)")
            out[task.name] = picked
        self._items = out
        return out

    def samples(self) -> Iterator[tuple[str, bool]]:
        """(proposition, is_true) of every item, tasks interleaved in a fixed hashed order."""
        rows = [(it.key, j, s) for items in self.items().values() for it in items
                for j, s in enumerate(it.samples(self.source.negatives))]
        rows.sort(key=lambda r: _h(r[0], str(r[1]), "order"))
        for _, _, s in rows:
            yield s

    def label_texts(self) -> tuple[str, str]:
        """The label tokens as text (a registry name becomes its token string; resolve_labels checks them)."""
        pos, neg = (SPECIAL_TOKENS.get(x, x) for x in self.source.labels)
        return pos, neg

    def digest(self) -> str:
        """Hash of every sample this source yields (what its shards hold)."""
        h = hashlib.sha256(json.dumps([self.label_texts(), self.split]).encode())
        for text, true in self.samples():
            h.update(f"{int(true)}{text}\x1e".encode())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        return "teacher:" + ",".join(t.name for t in self.tasks)


def teacher_tasks_seen(sources: list[DataSource]) -> dict[str, float]:
    """Task -> held-out share, for every task a config's teacher sources train on."""
    return {t: s.holdout for s in sources if s.kind == "teacher" and (s.split or "train") == "train"
            for t in (s.tasks if s.tasks is not None else load_tasks(s.templates))}
