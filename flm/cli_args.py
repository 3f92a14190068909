"""Command-line arguments the flm commands share: the run config with its ``--set`` overrides, and the
parsers of numbers and number lists (argparse ``type=`` functions: a bad value is a usage error, exit 2)."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flm.config import RunConfig


def add_config_args(
    p: argparse.ArgumentParser, help: str, *, example: str = "train.steps=50", optional: bool = False
) -> None:
    """The positional ``config`` (a TOML file; optional: may be left out) and repeatable ``--set KEY=VALUE``
    (into ``args.overrides``); ``example`` is the override the help shows."""
    p.add_argument("config", nargs="?" if optional else None, help=help)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. --set {example} (repeatable)",
    )


def load_run_config(args: argparse.Namespace) -> RunConfig:
    """The config ``args.config`` names with ``args.overrides`` applied; without a file, the built-in
    defaults (with the overrides). A growth of its plan that cannot work is refused here too."""
    from flm.config import config_from_dict, load_config  # pydantic: only when a command runs
    from flm.stages import check_plan

    cfg = load_config(args.config, args.overrides) if args.config else config_from_dict({}, "defaults", args.overrides)
    return check_plan(cfg)


Handler = Callable[[argparse.Namespace], int]


def add_command(sub: argparse._SubParsersAction, name: str, func: Handler, **kw: Any) -> argparse.ArgumentParser:
    """Command ``name`` that runs ``func(args)``. Its one-line help (in the parent's list) is the first
    paragraph of ``func``'s docstring and its description (``--help``) the rest, unless ``kw`` gives them."""
    head, _, body = inspect.cleandoc(func.__doc__ or "").partition("\n\n")
    kw.setdefault("help", " ".join(head.split()))
    kw.setdefault("description", body or head)
    p = sub.add_parser(name, **kw)
    p.set_defaults(func=func)
    return p


def add_command_group(
    sub: argparse._SubParsersAction, name: str, help: str, description: str, metavar: str = "SUBCOMMAND"
) -> argparse._SubParsersAction:
    """Command ``name`` that only holds subcommands (``flm data``, ``flm mup``); given alone, it prints its
    help and exits 2. Returns the action to add the subcommands to."""
    p = sub.add_parser(name, help=help, description=description)

    def show_help(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=show_help)
    return p.add_subparsers(dest=f"{name}_command", metavar=metavar)


def floats(text: str) -> list[float]:
    """'1e-3,3e-3' -> [0.001, 0.003]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def positive_ints(text: str) -> list[int]:
    """'32,64' -> [32, 64]; zero, negative or fractional values are refused."""
    values = floats(text)
    if any(v != int(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return [int(v) for v in values]


def positive(text: str) -> float:
    """A number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value
