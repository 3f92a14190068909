"""The `flm` command. Each command group lives beside the code it drives, in one ``cli.py`` module.

Every module in ``COMMANDS`` exposes ``register(sub)``; the parser it adds sets ``func``, a handler named
``cmd_<command words>`` (``flm eval ppl`` -> ``cmd_eval_ppl``) that takes the parsed args and returns the
exit code. A handler imports the heavy modules it drives (torch, transformers, lm-eval) inside itself, so
that ``flm --help`` loads none of them. User mistakes raise ``FlmError``: one line on stderr, exit code 2,
no traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from flm import __version__
from flm.checkpoint import cli as checkpoint_cli
from flm.data import cli as data_cli
from flm.errors import FlmError, leave_after_rank0
from flm.eval import cli as eval_cli
from flm.generate import cli as generate_cli
from flm.growth import cli as growth_cli
from flm.interop import cli as interop_cli
from flm.scaling import cli as scaling_cli
from flm.scaling.plan import cli as plan_cli
from flm.train import cli as train_cli

COMMANDS = (
    data_cli,  # flm data prepare / stats / teacher / instruct
    train_cli,  # flm train, flm run, flm plot
    generate_cli,  # flm generate
    checkpoint_cli,  # flm checkpoint consolidate / verify
    growth_cli,  # flm grow
    scaling_cli,  # flm cost, flm mup coord-check / search, flm predict
    plan_cli,  # flm plan search / layout / grow / fit
    eval_cli,  # flm eval ppl / bench / iq / teacher / harness / list
    interop_cli,  # flm export hf / gguf, flm import hf
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flm",
        description="Train LLMs on a budget by progressive growth (FLM-101B): train small, grow with "
        "function-preserving MSG operators, keep training.",
    )
    parser.add_argument("--version", action="version", version=f"flm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in COMMANDS:
        group.register(sub)
    _tag_subparsers(parser)
    return parser


def _tag_subparsers(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command parser records itself as ``_parser``, so that an unknown option is reported with
    that command's usage line rather than the top-level one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                sp.set_defaults(_parser=sp)
                _tag_subparsers(sp)


def _other_rank() -> bool:
    """A rank other than 0 of a job of several processes (a stray RANK alone does not make one)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = getattr(args, "_parser", parser)
        wants_set = "--set" in command.format_usage()
        hint = " (config values: --set key=value, e.g. --set train.steps=50)" if wants_set else ""
        command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except FlmError as e:
        if e.every_rank and _other_rank():  # torchrun: rank 0 speaks for all
            leave_after_rank0(e.exit_code)
        else:
            print(f"flm {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # an output path that cannot be written, a folder where a file should be, ...
        where = f" {e.filename}" if e.filename else ""
        fix = ("free space (or pick a path on another disk), then run it again"
               if e.errno in (errno.ENOSPC, errno.EDQUOT) else "check the path and its permissions")
        print(f"flm {args.command}: error: cannot use{where}: {e.strerror or e}; {fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
