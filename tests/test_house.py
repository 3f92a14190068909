"""The house rules that a reader should not have to check by eye: every module sits in a layer of the
import contract, imports stay at module top (lazy only for heavy optional dependencies, and in the commands'
own modules, whose parsers must start fast: `flm --help` imports no torch), no function runs past 60 lines and
no module past 600, the Trainer and the ParallelModel stay short, and the package logs (flm.log) instead of
printing."""

from __future__ import annotations

import argparse
import ast
import configparser
import re
from pathlib import Path

from flm.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "flm"
# Optional or heavy dependencies that may be imported inside the function that needs them.
# flm.eval.lm_adapter subclasses lm-eval's model class, so importing it imports lm-eval.
# flm.hardware imports torch, which `flm cost` (pricing GPUs from a table) does without.
LAZY_OK = ("lm_eval", "transformers", "datasets", "matplotlib", "gguf", "torch.utils.tensorboard", "tiktoken",
           "pyarrow", "tqdm", "flm.eval.lm_adapter", "flm.hardware")
# A command's module (its parser and handlers) imports what a handler needs inside that handler: building the
# parser of every command (`flm --help`, any command's start) must not import torch, pydantic or transformers.
COMMAND_MODULES = ("cli.py", "cli_args.py")
# flm.hardware also holds the GPU catalog that `flm cost` reads: torch only inside its measuring functions.
LAZY_IN = {"flm/hardware.py": ("torch",)}
MAX_LINES = 60  # per function
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = {"flm/train/loop.py": ("Trainer", 200), "flm/distributed/parallel_model.py": ("ParallelModel", 200)}
# Where print() is the point: a command's final output (cli.py, and the modules that render a command's report
# tables) and the progress display; everything else logs (flm.log).
PRINTS_OK = ("cli.py", "progress.py", "report.py", "cost_report.py", "memory_report.py")


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(f, ast.parse(f.read_text())) for f in sorted(PACKAGE.rglob("*.py"))]


def test_every_top_level_module_is_in_the_layer_contract():
    parser = configparser.ConfigParser()
    parser.read(REPO / ".importlinter")
    layers = parser["importlinter:contract:layers"]["layers"]
    named = {name.strip() for line in layers.splitlines() for name in re.split("[|:]", line) if name.strip()}
    tops = {f"flm.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    tops |= {f"flm.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    # a package split over two layers (flm.growth) names each of its modules instead
    split = {t for t in tops if any(n.startswith(t + ".") for n in named)}
    for pkg in split:
        mods = {f"{pkg}.{p.stem}" for p in (PACKAGE / pkg.split(".")[1]).glob("*.py") if p.stem != "__init__"}
        assert mods - named == set(), f"add these modules of {pkg} to a layer in .importlinter"
    assert tops - named - split == set(), "add these modules to a layer in .importlinter"


def test_imports_inside_functions_are_only_for_heavy_optional_dependencies():
    found = []
    for path, tree in _modules():
        if path.name.endswith(COMMAND_MODULES):
            continue
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                ok = LAZY_OK + LAZY_IN.get(path.relative_to(REPO).as_posix(), ())
                found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if not n.startswith(ok)]
    assert found == [], "move these imports to the top of their module"


def test_no_function_is_longer_than_60_lines():
    long = [f"{path.relative_to(REPO)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1})"
            for path, tree in _modules() for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.end_lineno - fn.lineno + 1 > MAX_LINES]
    assert long == [], f"split these functions (at most {MAX_LINES} lines)"


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(command words, parser) of every command under ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                yield (*words, name), sp
                yield from _commands(sp, (*words, name))


def test_every_command_group_is_one_cli_module_with_handlers_named_one_way():
    assert sorted(PACKAGE.rglob("*_cli.py")) == [], "a command group is one cli.py module"
    groups = {f"flm.{'.'.join(p.relative_to(PACKAGE).parent.parts)}.cli" for p in PACKAGE.rglob("*/cli.py")}
    assert {m.__name__ for m in COMMANDS} == groups, "flm/cli.py imports every command group's cli.py"
    wrong = []
    for words, sp in _commands(build_parser()):
        func = sp.get_default("func")
        want = "cmd_" + "_".join(words).replace("-", "_")
        if func is not None and func.__name__ not in ("show_help", want):  # show_help: a group given alone
            wrong.append(f"flm {' '.join(words)}: {func.__module__}.{func.__name__}")
    assert wrong == [], "name a command's handler cmd_<command words>"


def test_the_cli_layer_is_in_the_import_contract():
    """flm.cli imports its command groups statically, so lint-imports sees the top layer's imports."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    assert not any(isinstance(n, ast.Attribute) and n.attr == "import_module" for n in ast.walk(tree))
    parser = configparser.ConfigParser()
    parser.read(REPO / ".importlinter")
    first = parser["importlinter:contract:layers"]["layers"].split()[0]
    assert first == "flm.cli"


def test_no_module_is_longer_than_600_lines():
    long = [f"{p.relative_to(REPO)} ({n})" for p, _ in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert long == [], f"split these modules (at most {MAX_MODULE_LINES} lines)"


def test_the_trainer_and_the_parallel_model_stay_short():
    for rel, (name, limit) in MAX_CLASS_LINES.items():
        tree = ast.parse((REPO / rel).read_text())
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
        assert cls.end_lineno - cls.lineno + 1 <= limit, f"{name} is over {limit} lines: move a part out"


def test_the_package_logs_instead_of_printing():
    found = []
    for path, tree in _modules():
        if path.name in PRINTS_OK:
            continue
        mains = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        script = {id(node) for m in mains for node in ast.walk(m)}  # a module's own command line: its output
        for node in ast.walk(tree):
            if id(node) in script:
                continue
            if isinstance(node, ast.Call) and (getattr(node.func, "id", None) == "print"
                                               or getattr(node.func, "attr", None) == "print"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == [], "log these with flm.log.get_logger(__name__) (info: stdout, warning: stderr)"


def test_building_every_commands_parser_imports_no_heavy_library():
    """`flm --help` and every command's start build all parsers: they must not pay for torch & co."""
    import subprocess
    import sys

    code = ("import sys, flm.cli; flm.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'pydantic', 'transformers', 'scipy', 'numpy', 'safetensors', "
            "'tokenizers', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_flm_cost_imports_no_torch():
    """`flm cost` prices a plan from tables and formulas: it starts without torch."""
    import subprocess
    import sys

    code = ("import contextlib, io, sys, flm.cli\nwith contextlib.redirect_stdout(io.StringIO()):\n"
            "    flm.cli.main(['cost', 'configs/flm-101b.toml'])\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
