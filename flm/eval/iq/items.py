"""IQ items, the subtask registry, and deterministic item generation.

Every subtask has a generator ``gen(rng, n, shots) -> list[Item]``. Items come from
``random.Random(f"flm-iq:{seed}:{subtask}")``: the same seed gives every model the same items, and a
subtask's items do not change when other subtasks are added or skipped.

Two kinds of item:
- generative (``choices`` empty): the model continues ``prompt`` greedily until a newline; it passes when
  the generation equals ``answer`` after ``normalize`` (the paper's passing rate, exact match);
- choice (``choices`` set; symbolic mapping): the model passes when ``answer`` has the highest
  log-likelihood among ``choices`` as a continuation of ``prompt`` (each scored as " " + choice). This
  makes chance level well defined (1 / number of labels) for a model that knows nothing.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from flm.errors import FlmError


@dataclass(frozen=True)
class Item:
    prompt: str
    answer: str
    choices: tuple[str, ...] = ()
    source: str = ""  # where the item's text came from (symbolic mapping)
    subtask: str = ""
    index: int = 0

    @property
    def is_choice(self) -> bool:
        return bool(self.choices)

    def to_dict(self) -> dict:
        return asdict(self)


Generator = Callable[..., list[Item]]  # (rng, n, shots, **options) -> items


@dataclass(frozen=True)
class Subtask:
    name: str
    family: str
    shots: int
    gen: Generator
    description: str = ""
    extra: dict = field(default_factory=dict)


FAMILIES = ("symbolic_mapping", "rule_understanding", "pattern_mining", "anti_interference")
SUBTASKS: dict[str, Subtask] = {}


def register(name: str, family: str, shots: int, description: str) -> Callable[[Generator], Generator]:
    assert family in FAMILIES, family

    def deco(gen: Generator) -> Generator:
        SUBTASKS[name] = Subtask(name, family, shots, gen, description)
        return gen

    return deco


def register_examples(
    name: str, family: str, shots: int, description: str
) -> Callable[[Callable[[random.Random], tuple[str, str]]], Callable[[random.Random], tuple[str, str]]]:
    """Register a subtask made of independent examples: ``example(rng) -> (prompt, answer)`` gives the
    query and each of its ``shots`` demonstrations (demonstrations drawn first)."""

    def deco(example: Callable[[random.Random], tuple[str, str]]) -> Callable[[random.Random], tuple[str, str]]:
        def gen(rng: random.Random, n: int, shots: int) -> list[Item]:
            items = []
            for _ in range(n):
                demos = [f"{p} {a}" for p, a in (example(rng) for _ in range(shots))]
                prompt, answer = example(rng)
                items.append(Item(few_shot(demos, prompt), answer))
            return items

        register(name, family, shots, description)(gen)
        return example

    return deco


def normalize(text: str) -> str:
    """Whitespace squeezed, commas followed by one space, a trailing period and outer quotes removed."""
    s = " ".join(text.split())
    s = re.sub(r"\s*,\s*", ", ", s)
    s = s.strip().rstrip(".").strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        s = s[1:-1].strip()
    return s


def item_rng(seed: int, subtask: str) -> random.Random:
    return random.Random(f"flm-iq:{seed}:{subtask}")


def generate_items(subtask: str, seed: int = 0, n: int = 100, shots: int | None = None, **options) -> list[Item]:
    """The first ``n`` items of ``subtask`` for ``seed``; ``shots`` overrides the subtask's default;
    ``options`` go to the generator (symbol_mapping takes ``sources``)."""
    if subtask not in SUBTASKS:
        raise FlmError(f"unknown IQ subtask {subtask!r}; known: {', '.join(SUBTASKS)}")
    st = SUBTASKS[subtask]
    items = st.gen(item_rng(seed, subtask), n, st.shots if shots is None else shots, **options)
    return [Item(it.prompt, it.answer, it.choices, it.source, subtask, i) for i, it in enumerate(items)]


def select_subtasks(spec: str | None) -> list[str]:
    """Subtask names from a comma list of subtask or family names (None or 'all' = every subtask)."""
    if not spec or spec.strip() == "all":
        return list(SUBTASKS)
    chosen: list[str] = []
    for raw in spec.split(","):
        name = raw.strip()
        if not name:
            continue
        if name in SUBTASKS:
            names = [name]
        elif name in FAMILIES:
            names = [s for s, t in SUBTASKS.items() if t.family == name]
        else:
            raise FlmError(
                f"unknown IQ task {name!r}; known families: {', '.join(FAMILIES)}; subtasks: {', '.join(SUBTASKS)}"
            )
        chosen += [n for n in names if n not in chosen]
    if not chosen:
        raise FlmError("--tasks is empty; name IQ subtasks or families, or 'all'")
    return chosen


def few_shot(blocks: list[str], query: str) -> str:
    """Demonstrations and the query, separated by blank lines."""
    return "\n\n".join([*blocks, query])
