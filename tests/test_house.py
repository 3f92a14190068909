"""The house rules that a reader should not have to check by eye: every module sits in a layer of the
import contract, imports stay at module top (lazy only for heavy optional dependencies, and in the commands'
own modules, whose parsers must start fast: `flm --help` imports no torch), and no function
runs past 80 lines without a comment saying why."""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "flm"
# Optional or heavy dependencies that may be imported inside the function that needs them.
# flm.eval.lm_adapter subclasses lm-eval's model class, so importing it imports lm-eval.
# flm.hardware imports torch, which `flm cost` (pricing GPUs from a table) does without.
LAZY_OK = ("lm_eval", "transformers", "datasets", "matplotlib", "gguf", "torch.utils.tensorboard", "tiktoken",
           "pyarrow", "tqdm", "flm.eval.lm_adapter", "flm.hardware")
# A command's module (its parser and handlers) imports what a handler needs inside that handler: building the
# parser of every command (`flm --help`, any command's start) must not import torch, pydantic or transformers.
COMMAND_MODULES = ("cli.py", "_cli.py", "cli_args.py")
# flm.hardware also holds the GPU catalog that `flm cost` reads: torch only inside its measuring functions.
LAZY_IN = {"flm/hardware.py": ("torch",)}
MAX_LINES = 80


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(f, ast.parse(f.read_text())) for f in sorted(PACKAGE.rglob("*.py"))]


def test_every_top_level_module_is_in_the_layer_contract():
    parser = configparser.ConfigParser()
    parser.read(REPO / ".importlinter")
    layers = parser["importlinter:contract:layers"]["layers"]
    named = {name.strip() for line in layers.splitlines() for name in line.split("|") if name.strip()}
    tops = {f"flm.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    tops |= {f"flm.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert tops - named == set(), "add these modules to a layer in .importlinter"


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


def test_no_function_is_longer_than_80_lines_without_a_reason():
    long = []
    for path, tree in _modules():
        lines = path.read_text().splitlines()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.end_lineno - fn.lineno + 1 > MAX_LINES:
                head = lines[fn.lineno - 1 : fn.lineno + 1]
                if not any("long:" in line for line in head):  # e.g. `def f(...):  # long: one table, kept whole`
                    long.append(f"{path.relative_to(REPO)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1})")
    assert long == [], "split these functions, or say why beside the def with a '# long: ...' comment"


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
