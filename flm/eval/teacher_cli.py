"""`flm eval teacher`: its arguments; the scoring (flm.eval.teacher) is imported when the command runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from flm.cli_args import add_command
from flm.errors import FlmError

if TYPE_CHECKING:
    from flm.eval.scorer import Scorer


def _teacher(args: argparse.Namespace, load: Callable[[argparse.Namespace], Scorer]) -> int:
    """held-out accuracy on teacher-signal tasks, from the two label tokens

    Score the held-out items of teacher-signal tasks (flm data teacher --list) by comparing the
    probabilities of the true and false label tokens after each proposition; per task: item accuracy
    against its chance level, proposition accuracy, and whether the model trained on the task. An flm run's
    own teacher settings (templates, hold-out share, labels) are used; HF models read ' yes'/' no' by default.
    """
    if args.limit is not None and args.limit <= 0:
        raise FlmError(f"--limit {args.limit}: give a positive number of items per task")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    if args.tasks is not None and not tasks:
        raise FlmError("--tasks is empty; name one or more teacher tasks (flm data teacher --list)")
    from flm.eval.report import write_json
    from flm.eval.teacher import print_teacher, run_teacher

    report = run_teacher(load(args), tasks, labels=tuple(args.labels) if args.labels else None, limit=args.limit,
                         templates=args.templates, progress=not args.no_progress)
    report["model"] = args.model
    print_teacher(report)
    write_json(args.out, report)
    return 0


def register_teacher(ev: argparse._SubParsersAction, model_options: Callable[[argparse.ArgumentParser], None],
                     load: Callable[[argparse.Namespace], Scorer]) -> None:
    def handler(args: argparse.Namespace) -> int:
        return _teacher(args, load)

    handler.__doc__ = _teacher.__doc__
    t = add_command(ev, "teacher", handler)
    model_options(t)
    t.add_argument("--tasks", default=None, help="comma list of teacher tasks (default: those the run trained on, "
                   "else every task)")
    t.add_argument("--limit", type=int, default=None, help="held-out items per task (default: all)")
    t.add_argument("--labels", nargs=2, default=None, metavar=("TRUE", "FALSE"),
                   help="label tokens (default: the run's; label_pos/label_neg; ' yes'/' no' for HF models)")
    t.add_argument("--templates", default=None, help="a TOML/JSON file of extra tasks (default: the run's)")
