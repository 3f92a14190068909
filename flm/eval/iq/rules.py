"""Rule understanding: follow an explicitly stated rule.

- counting (0-shot): "Count from a to b in steps of k" -> "a, a+k, ..., b".
- replace_lowercase (4-shot): replace every lowercase occurrence of one letter with another; the same
  letter in upper case stays (which is what makes the rule about *lowercase*).
- replace_word (4-shot): replace every occurrence of one word in a sentence with another word.

Each demonstration states its own rule (different letters or words), so the model must read the rule,
not copy the demonstrations' answers.
"""

from __future__ import annotations

import random
import string

from flm.eval.iq.items import register_examples
from flm.eval.iq.words import ADJECTIVES, NOUNS, VERBS_PAST


@register_examples("counting", "rule_understanding", 0, "count from a to b in steps of k (0-shot)")
def _counting_example(rng: random.Random) -> tuple[str, str]:
    k = rng.choice([1, 2, 2, 3, 3, 4, 5, 5, 10])
    a = rng.randint(0, 30)
    terms = rng.randint(4, 8)
    nums = [a + k * i for i in range(terms)]
    prompt = f"Count from {nums[0]} to {nums[-1]} in steps of {k}, separating the numbers with commas.\nAnswer:"
    return prompt, ", ".join(map(str, nums))


@register_examples("replace_lowercase", "rule_understanding", 4, "replace one lowercase letter with another (4-shot)")
def _lowercase_example(rng: random.Random) -> tuple[str, str]:
    src, dst = rng.sample(string.ascii_lowercase, 2)
    others = [c for c in string.ascii_letters if c.lower() not in (src, dst)]
    length = rng.randint(6, 10)
    chars = [rng.choice(others) for _ in range(length)]
    slots = rng.sample(range(length), rng.randint(2, 4))
    for j, pos in enumerate(slots):
        chars[pos] = src if j < 1 or rng.random() < 0.65 else src.upper()
    text = "".join(chars)
    rule = f'Replace every lowercase "{src}" with "{dst}".'
    return f"{rule}\nInput: {text}\nOutput:", text.replace(src, dst)


def _sentence(rng: random.Random, nouns: list[str]) -> str:
    a1, a2 = rng.sample(ADJECTIVES, 2)
    return f"the {a1} {nouns[0]} {rng.choice(VERBS_PAST)} the {a2} {nouns[1]}"


@register_examples("replace_word", "rule_understanding", 4, "replace one word of a sentence with another (4-shot)")
def _word_example(rng: random.Random) -> tuple[str, str]:
    old, new, other = rng.sample(NOUNS, 3)
    nouns = [old, old] if rng.random() < 0.3 else rng.sample([old, other], 2)
    text = _sentence(rng, nouns)
    if rng.random() < 0.4:  # a second clause: the word may appear up to three times
        extra = rng.sample([old, *rng.sample([w for w in NOUNS if w not in (old, new)], 2)], 2)
        text += " and " + _sentence(rng, extra)
    rule = f'Replace the word "{old}" with "{new}".'
    answer = " ".join(new if w == old else w for w in text.split())
    return f"{rule}\nInput: {text}\nOutput:", answer
