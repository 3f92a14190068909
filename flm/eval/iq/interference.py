"""Anti-interference: find the facts that matter among distractors (bAbI-style, 2-shot by default).

- multi_key_retrieval: a list of key-value pairs; give the values of two of the keys, in order;
- single_supporting_fact (bAbI task 1): people move between places; where is X now? One fact (X's last
  move) answers it, every other sentence is a distractor;
- two_supporting_facts (bAbI task 2): people move and pick up or drop objects; where is object O? Two
  facts answer it: who took O (or where it was dropped) and where that person went afterwards.
"""

from __future__ import annotations

import random

from flm.eval.iq.items import register_examples
from flm.eval.iq.words import DROP_VERBS, MOTION_VERBS, NOUNS, OBJECTS, PEOPLE, PICK_VERBS, PLACES


@register_examples("multi_key_retrieval", "anti_interference", 2, "values of two keys among 5-8 pairs (2-shot)")
def _keys_example(rng: random.Random) -> tuple[str, str]:
    keys = rng.sample(NOUNS, rng.randint(5, 8))
    values = rng.sample(range(1000, 10000), len(keys))
    a, b = rng.sample(range(len(keys)), 2)
    pairs = "\n".join(f"{k}: {v}" for k, v in zip(keys, values))
    prompt = f"{pairs}\nWhat are the values of {keys[a]} and {keys[b]}?\nAnswer:"
    return prompt, f"{values[a]}, {values[b]}"


def _move(rng: random.Random, who: str, where: str) -> str:
    return f"{who} {rng.choice(MOTION_VERBS)} the {where}."


@register_examples("single_supporting_fact", "anti_interference", 2, "where is a person, among other moves (2-shot)")
def _one_fact_example(rng: random.Random) -> tuple[str, str]:
    people = rng.sample(PEOPLE, rng.randint(2, 4))
    target = people[0]
    where: dict[str, str] = {}
    lines: list[str] = []
    own_moves = rng.randint(1, 3)
    moves = [target] * own_moves + [rng.choice(people[1:]) for _ in range(rng.randint(2, 5))]
    rng.shuffle(moves)
    for who in moves:
        place = rng.choice([p for p in PLACES if p != where.get(who)])
        where[who] = place
        lines.append(_move(rng, who, place))
    prompt = f"Story: {' '.join(lines)}\nQuestion: Where is {target}?\nAnswer:"
    return prompt, where[target]


@register_examples("two_supporting_facts", "anti_interference", 2, "where is an object someone carried (2-shot)")
def _two_facts_example(rng: random.Random) -> tuple[str, str]:
    people = rng.sample(PEOPLE, rng.randint(2, 3))
    objects = rng.sample(OBJECTS, 2)
    target_obj, other_obj = objects
    holder = rng.choice(people)
    where: dict[str, str] = {}
    lines: list[str] = []

    def move(who: str) -> None:
        place = rng.choice([p for p in PLACES if p != where.get(who)])
        where[who] = place
        lines.append(_move(rng, who, place))

    for who in people:  # everyone starts somewhere
        move(who)
    rng.shuffle(lines)
    lines.append(f"{holder} {rng.choice(PICK_VERBS)} the {target_obj}.")
    other_holder = rng.choice(people)
    if rng.random() < 0.6:  # a distractor object, taken by someone
        lines.append(f"{other_holder} {rng.choice(PICK_VERBS)} the {other_obj}.")
    answer_at = None
    events = [holder] * rng.randint(1, 2) + [rng.choice(people) for _ in range(rng.randint(1, 3))]
    rng.shuffle(events)  # the holder moves at least once after the pick-up: two facts are needed
    drop_after = rng.randrange(len(events)) if rng.random() < 0.3 else None
    for j, who in enumerate(events):
        move(who)
        if j == drop_after:
            answer_at = where[holder]
            lines.append(f"{holder} {rng.choice(DROP_VERBS)} the {target_obj}.")
    prompt = f"Story: {' '.join(lines)}\nQuestion: Where is the {target_obj}?\nAnswer:"
    return prompt, answer_at or where[holder]
