"""Run the IQ suite on a scorer: passing rate per subtask, per family, and overall."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from flm.errors import FlmError
from flm.eval.iq.items import FAMILIES, SUBTASKS, Item, generate_items, normalize
from flm.eval.iq.symbolic import parse_sources
from flm.eval.report import print_table
from flm.eval.scorer import GenRequest, Scorer
from flm.log import get_logger
from flm.progress import progress_bar

log = get_logger(__name__)

STOP = ["\n"]
EXTRA_TOKENS = 8  # generation budget beyond the answer's own length in the model's tokens


def score_items(scorer: Scorer, items: Sequence[Item], advance: Callable[[int], None] | None = None):
    """(outputs, passed) per item: the greedy generation, or the chosen symbol for choice items."""
    outputs: list[str] = [""] * len(items)
    passed: list[bool] = [False] * len(items)
    choice = [i for i, it in enumerate(items) if it.is_choice]
    gen = [i for i, it in enumerate(items) if not it.is_choice]
    if choice:
        pairs, owner = [], []
        for i in choice:
            for c in items[i].choices:
                pairs.append((items[i].prompt, " " + c))
                owner.append(i)
        lls = scorer.loglikelihood(pairs)
        best: dict[int, tuple[float, str]] = {}
        for i, (lp, _), (_, cont) in zip(owner, lls, pairs):
            if i not in best or lp > best[i][0]:
                best[i] = (lp, cont[1:])
        for i in choice:
            outputs[i] = best[i][1]
            passed[i] = outputs[i] == items[i].answer
        if advance:
            advance(len(choice))
    if gen:
        reqs = [
            GenRequest(items[i].prompt, STOP, len(scorer.encode(" " + items[i].answer)) + EXTRA_TOKENS) for i in gen
        ]
        for i, out in zip(gen, scorer.generate_until(reqs, advance)):
            outputs[i] = out
            passed[i] = normalize(out) == normalize(items[i].answer)
    return outputs, passed


DEMO_SEPARATOR = "\n\n"  # every generator joins its demonstrations and the query with a blank line


def _tokens_needed(scorer: Scorer, it: Item) -> int:
    prompt = len(scorer.encode(it.prompt))
    if it.is_choice:
        return prompt + max(len(scorer.encode(" " + c)) for c in it.choices) - 1
    return prompt + len(scorer.encode(" " + it.answer)) + EXTRA_TOKENS


def fit_items(scorer: Scorer, items: Sequence[Item]) -> tuple[list[Item], int, int]:
    """Items that fit the model's context: whole demonstrations are dropped from the front of a prompt
    that is too long (fewer shots, instead of a prompt cut mid-demonstration). Returns (items, how many
    were shortened, how many still overflow with no demonstration left: those are cut from the left)."""
    out, shortened, cut = [], 0, 0
    for it in items:
        blocks = it.prompt.split(DEMO_SEPARATOR)
        dropped, need = 0, _tokens_needed(scorer, it)
        while need > scorer.max_length and len(blocks) - dropped > 1:
            dropped += 1
            it = replace(it, prompt=DEMO_SEPARATOR.join(blocks[dropped:]))
            need = _tokens_needed(scorer, it)
        shortened += dropped > 0
        cut += need > scorer.max_length
        out.append(it)
    return out, shortened, cut


def _by_source(items: list, passed: list[bool]) -> dict[str, dict[str, float]]:
    """Symbol mapping's score per source of its label words."""
    by: dict[str, list[bool]] = {}
    for it, ok in zip(items, passed):
        by.setdefault(it.source, []).append(ok)
    return {s: {"n": len(v), "score": 100.0 * sum(v) / len(v)} for s, v in by.items()}


def _family_scores(report: dict[str, Any], names: list[str]) -> None:
    """Each family's score (the mean of its subtasks') and the average over the families, into ``report``."""
    for fam in FAMILIES:
        subs = [n for n in names if SUBTASKS[n].family == fam]
        if subs:
            scores = [report["subtasks"][n]["score"] for n in subs]
            report["families"][fam] = {"score": sum(scores) / len(scores), "subtasks": subs}
    fam_scores = [f["score"] for f in report["families"].values()]
    report["average"] = sum(fam_scores) / len(fam_scores)


def run_iq(
    scorer: Scorer,
    subtasks: Sequence[str] | None = None,
    *,
    seed: int = 0,
    limit: int = 100,
    shots: int | None = None,
    sources: str | None = None,
    progress: bool = True,
    samples: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Generate every subtask's items from ``seed`` and score them; returns the JSON-able report.

    ``shots`` overrides every subtask's default number of demonstrations; ``sources`` picks the symbol
    mapping sources (comma list; default: all available). Per-item records go to ``samples`` if given.
    """
    names = list(subtasks or SUBTASKS)
    if limit <= 0:
        raise FlmError(f"--limit {limit}: give a positive number of items per subtask")
    src = parse_sources(sources)
    t_all = time.perf_counter()
    all_items = {
        name: generate_items(name, seed, limit, shots, **({"sources": src} if name == "symbol_mapping" else {}))
        for name in names
    }
    report: dict[str, Any] = {"model": scorer.name, "model_path": scorer.source, "seed": seed, "limit": limit,
                              "shots": shots, "symbol_sources": src, "max_length": scorer.max_length,
                              "subtasks": {}, "families": {}}
    total = sum(len(v) for v in all_items.values())
    with progress_bar("iq", total, enabled=progress) as bar:
        for name, items in all_items.items():
            t0 = time.perf_counter()
            items, shortened, cut = fit_items(scorer, items)
            outputs, passed = score_items(scorer, items, bar.advance)
            st = SUBTASKS[name]
            entry: dict[str, Any] = {
                "family": st.family,
                "n": len(items),
                "correct": sum(passed),
                "score": 100.0 * sum(passed) / len(items),
                "shots": st.shots if shots is None else shots,
                "fewer_shots": shortened,
                "truncated": cut,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            if name == "symbol_mapping":
                entry["by_source"] = _by_source(items, passed)
            report["subtasks"][name] = entry
            if samples is not None:
                samples += [{"subtask": name, "index": it.index, "prompt": it.prompt, "answer": it.answer,
                             "output": out, "passed": ok} for it, out, ok in zip(items, outputs, passed)]
    _family_scores(report, names)
    report["seconds"] = round(time.perf_counter() - t_all, 3)
    return report


def print_report(report: dict[str, Any]) -> None:
    rows: list[list[Any]] = []
    for fam, f in report["families"].items():
        for name in f["subtasks"]:
            s = report["subtasks"][name]
            short = s.get("fewer_shots", 0) + s.get("truncated", 0)
            rows.append([fam, name, s["shots"], s["n"], short or "", f"{s['score']:.1f}"])
        rows.append([fam, "[b]family average[/b]", "", "", "", f"[b]{f['score']:.1f}[/b]"])
    rows.append(["[b]all[/b]", "[b]average of families[/b]", "", "", "", f"[b]{report['average']:.1f}[/b]"])
    sources = ",".join(report.get("symbol_sources") or [])
    print_table(
        f"IQ suite: {report['model']} (seed {report['seed']}, symbol sources {sources}, passing rate %)",
        ["family", "subtask", "shots", "items", "short", "pass %"],
        rows,
        left=2,
    )
    fewer = sum(s.get("fewer_shots", 0) for s in report["subtasks"].values())
    cut = sum(s.get("truncated", 0) for s in report["subtasks"].values())
    if fewer or cut:
        log.warning(
            f"note: {fewer + cut} items ('short') do not fit the model's {report['max_length']}-token "
            f"context with all their demonstrations: {fewer} ran with fewer shots, {cut} were cut from the left "
            "even without demonstrations; compare such scores only at equal context lengths"
        )
