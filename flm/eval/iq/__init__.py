"""The IQ-style test suite of FLM-101B (paper §5): four families, ten subtasks, generated from a seed.

- symbolic_mapping: symbol_mapping
- rule_understanding: counting, replace_lowercase, replace_word
- pattern_mining: head_tail, full_repeating, head_slicing
- anti_interference: multi_key_retrieval, single_supporting_fact, two_supporting_facts

See ``items`` for how items are generated and scored, and each family's module for its subtasks.
"""

from flm.eval.iq import interference, patterns, rules, symbolic  # noqa: F401  (registers the subtasks)
from flm.eval.iq.items import FAMILIES, SUBTASKS, Item, generate_items, normalize, select_subtasks
from flm.eval.iq.runner import print_report, run_iq, score_items

# list subtasks family by family (registration follows module import order)
_ordered = sorted(SUBTASKS.values(), key=lambda s: FAMILIES.index(s.family))
SUBTASKS.clear()
SUBTASKS.update((s.name, s) for s in _ordered)

__all__ = [
    "FAMILIES",
    "SUBTASKS",
    "Item",
    "generate_items",
    "normalize",
    "print_report",
    "run_iq",
    "score_items",
    "select_subtasks",
]
