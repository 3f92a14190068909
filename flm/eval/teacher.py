"""``flm eval teacher``: accuracy on held-out teacher-signal items, read out through the two label tokens.

Each held-out item gives one proposition per candidate answer (flm.data.teacher); after a proposition the
model's margin ``log p(true label) - log p(false label)`` says how true it finds it. Item accuracy: the
candidate with the largest margin is the item's answer (chance = 1 / candidates). Proposition accuracy:
the sign of the margin against the truth of each proposition. Only held-out items are scored, never the
items a model trained on; for an flm run the report says which tasks it saw as teacher signals.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from flm.checkpoint import read_config
from flm.config import DataSource, RunConfig
from flm.data.teacher import TeacherItem, TeacherSource, resolve_labels, teacher_tasks_seen
from flm.errors import FlmError
from flm.eval.models import FlmScorer
from flm.eval.report import print_table
from flm.eval.scorer import Scorer
from flm.progress import progress_bar


def run_configs(source: str) -> list[RunConfig]:
    """The configs of an flm checkpoint and of the run(s) holding it (a plan's stages mix data differently)."""
    p = Path(source)
    return [read_config(c) for c in (p / "config.toml", *(a / "config.toml" for a in p.parents[:4])) if c.is_file()]


def seen_tasks(configs: list[RunConfig]) -> dict[str, float]:
    """Teacher tasks trained on in any stage of these configs -> their held-out share."""
    seen: dict[str, float] = {}
    for cfg in configs:
        seen |= teacher_tasks_seen(cfg.data.train)
        for st in cfg.stages:
            if st.data and st.data.train is not None:
                seen |= teacher_tasks_seen(st.data.train)
    return seen


def _trained_source(configs: list[RunConfig]) -> DataSource | None:
    """The run's first teacher source: its templates, hold-out share and labels define the held-out items."""
    for cfg in configs:
        for src in [*cfg.data.train, *(s for st in cfg.stages if st.data and st.data.train for s in st.data.train)]:
            if src.kind == "teacher":
                return src
    return None


def label_ids(scorer: Scorer, labels: tuple[str, str] | None, where: str) -> tuple[int, int]:
    if isinstance(scorer, FlmScorer):
        return resolve_labels(labels or ("label_pos", "label_neg"), scorer.tok, where)[1]
    labels = labels or (" yes", " no")
    ids = [scorer.encode(x) for x in labels]
    if any(len(i) != 1 for i in ids) or ids[0] == ids[1]:
        raise FlmError(f"{where}: {list(labels)} are not two single tokens of this model's tokenizer; give --labels "
                       "as two strings that each encode to one token (e.g. ' yes' ' no')")
    return ids[0][0], ids[1][0]


def prompt_ids(scorer: Scorer, text: str) -> list[int]:
    """The tokens a proposition is scored on: the prefix token (for flm the EOS, which ends the previous
    sample of a packed training window), then the proposition as training encodes it; cut from the left."""
    return ([scorer.prefix_id] + scorer.encode(text))[-scorer.max_length :]


@torch.no_grad()
def margins(scorer: Scorer, texts: list[str], pos: int, neg: int, progress: bool = True) -> list[float]:
    """log p(pos) - log p(neg) after each text (``prompt_ids``: the prefix token, then the text)."""
    rows = [prompt_ids(scorer, t) for t in texts]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out = [0.0] * len(rows)
    with progress_bar("scoring", len(rows), enabled=progress) as bar:
        i = 0
        while i < len(order):
            width = len(rows[order[i]])
            batch = order[i : i + max(1, scorer.batch_tokens // width)]
            tokens = torch.zeros((len(batch), width), dtype=torch.long)
            for j, k in enumerate(batch):
                tokens[j, : len(rows[k])] = torch.tensor(rows[k])
            logits = scorer.logits(tokens.to(scorer.device))
            for j, k in enumerate(batch):
                last = logits[j, len(rows[k]) - 1].float()
                out[k] = float(last[pos] - last[neg])
            bar.advance(len(batch))
            i += len(batch)
    return out


def score_items(items: list[TeacherItem], m: list[float]) -> dict[str, float]:
    """Item accuracy, its chance level, and proposition accuracy from the margins (in item order)."""
    correct = binary = n_props = 0
    chance = 0.0
    at = 0
    for it in items:
        mine = m[at : at + len(it.propositions)]
        at += len(it.propositions)
        correct += max(range(len(mine)), key=mine.__getitem__) == it.gold
        binary += sum((v > 0) == (j == it.gold) for j, v in enumerate(mine))
        n_props += len(mine)
        chance += 1 / len(mine)
    n = max(len(items), 1)
    return {"accuracy": correct / n, "chance": chance / n, "proposition_accuracy": binary / max(n_props, 1)}


def run_teacher(
    scorer: Scorer, tasks: list[str] | None, *, labels: tuple[str, str] | None = None, limit: int | None = None,
    templates: str | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Held-out accuracy per task; for an flm model, the run's own templates/hold-out/labels and seen tasks."""
    configs = run_configs(scorer.source) if isinstance(scorer, FlmScorer) else []
    trained = _trained_source(configs)
    base = trained or DataSource(kind="teacher")
    update: dict[str, Any] = {"split": "heldout"}
    if tasks is not None:
        update["tasks"] = tasks
    elif trained is not None:
        update["tasks"] = sorted(seen_tasks(configs))
    if templates is not None:
        update["templates"] = templates
    source = TeacherSource(base.model_copy(update=update), "flm eval teacher", "heldout")
    pos, neg = label_ids(scorer, labels or (trained.labels if trained else None), "--labels")
    seen = seen_tasks(configs)
    report: dict[str, Any] = {"model": scorer.name, "model_path": scorer.source, "holdout": base.holdout,
                              "labels": [pos, neg], "seen_as_teacher": sorted(seen), "tasks": {}}
    for name, items in source.items().items():
        items = items[:limit] if limit else items
        m = margins(scorer, [p for it in items for p in it.propositions], pos, neg, progress)
        report["tasks"][name] = {"n": len(items), **score_items(items, m), "seen": name in seen}
    return report


def print_teacher(report: dict[str, Any]) -> None:
    rows = [[name, t["n"], t["accuracy"], t["chance"], t["proposition_accuracy"], "yes" if t["seen"] else "no"]
            for name, t in report["tasks"].items()]
    print_table(f"teacher signals, held-out items: {report['model']}",
                ["task", "items", "accuracy", "chance", "prop. acc", "trained on"], rows)


def seen_note(scorer: Scorer, report: dict[str, Any], tasks: list[str]) -> None:
    """`flm eval bench`: say (in the report and on stderr) which tasks the model saw as teacher signals, and
    which benchmark tasks it trained on the very items of (all but the held-out share of the validation
    split; MMLU's teacher items come from its dev/validation splits, the benchmark scores its test split)."""
    seen = seen_tasks(run_configs(scorer.source)) if isinstance(scorer, FlmScorer) else {}
    report["seen_as_teacher"] = sorted(seen)
    if not seen:
        return
    print(f"note: the model trained on teacher signals of {', '.join(sorted(seen))}", file=sys.stderr)
    overlap = {t: h for t, h in seen.items() if t in tasks and t != "mmlu"}
    if overlap:
        parts = ", ".join(f"{t} ({1 - h:.0%} of its items)" for t, h in sorted(overlap.items()))
        print(f"note: scores of {parts} include items trained on; `flm eval teacher` scores held-out items only",
              file=sys.stderr)
