"""Pattern mining: infer an unstated rule from five demonstrations (5-shot) and apply it.

Inputs are sequences of words; each item has its own hidden parameter, shared by its demonstrations
and its query, so the rule has to be induced in context:
- head_tail: output the first h and the last t words (h, t in {1, 2});
- full_repeating: output the whole sequence r times (r in {2, 3});
- head_slicing: slice the head off: output the sequence without its first k words (k in {1, 2, 3}).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from flm.eval.iq.items import Item, few_shot, register
from flm.eval.iq.words import NOUNS

Rule = Callable[[list[str]], list[str]]


def _items(rng: random.Random, n: int, shots: int, make: Callable[[random.Random], tuple[Rule, int, int]]):
    items = []
    for _ in range(n):
        rule, lo, hi = make(rng)
        blocks = []
        for _ in range(shots + 1):
            seq = rng.sample(NOUNS, rng.randint(lo, hi))
            blocks.append((f"Input: {' '.join(seq)}\nOutput:", " ".join(rule(seq))))
        demos = [f"{p} {a}" for p, a in blocks[:-1]]
        items.append(Item(few_shot(demos, blocks[-1][0]), blocks[-1][1]))
    return items


@register("head_tail", "pattern_mining", 5, "output the first h and last t words (5-shot)")
def head_tail(rng: random.Random, n: int, shots: int) -> list[Item]:
    def make(r: random.Random):
        h, t = r.randint(1, 2), r.randint(1, 2)
        return (lambda s: s[:h] + s[-t:]), h + t + 1, h + t + 4

    return _items(rng, n, shots, make)


@register("full_repeating", "pattern_mining", 5, "output the whole sequence r times (5-shot)")
def full_repeating(rng: random.Random, n: int, shots: int) -> list[Item]:
    def make(r: random.Random):
        times = r.randint(2, 3)
        return (lambda s: s * times), 2, 4

    return _items(rng, n, shots, make)


@register("head_slicing", "pattern_mining", 5, "drop the first k words (5-shot)")
def head_slicing(rng: random.Random, n: int, shots: int) -> list[Item]:
    def make(r: random.Random):
        k = r.randint(1, 3)
        return (lambda s: s[k:]), k + 2, k + 5

    return _items(rng, n, shots, make)
