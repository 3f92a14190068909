"""How often following the config through `run_plan` returns to a module it has already left.

It runs ``flm.train.run.run_plan`` on a tiny two-stage plan (a width growth; 2 + 2 steps on the bundled
corpus, prepared afresh in a temporary folder, so that no cache left by an earlier run shortens the path)
under ``sys.setprofile`` and keeps every flm function that is handed the config: a call with an
argument (``self`` included) that is one of flm.config's pydantic models or a ``flm.stages.Stage``. Each such
function counts once, at its first call, so training loops and the second stage add nothing new. The modules
of these calls, in order, are the config's path. A *return* is such a call from one module into another that
the path has already entered and left before (a call within a module, the plain return of a call to its
caller, and pydantic calling a config's validators are no returns). ``returns_without_property_reads``
leaves out the calls that are property reads (``stage.model``, ``cfg.seq_len``). Prints one JSON line (the
counts, the path, the returns) and writes benchmarks/results/config_path.json.

    .venv/bin/python benchmarks/config_path.py            # this tree
    PYTHONPATH=/path/to/other/checkout .venv/bin/python benchmarks/config_path.py --no-save   # another one
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "config_path.json"
PLAN = {
    "name": "config-path",
    "model": {"vocab_size": 512, "d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
    "data": {"train": [{"path": str(REPO / "data/pd-english/valid.jsonl.gz")}],
             "valid": [{"path": str(REPO / "data/pd-english/valid.jsonl.gz")}],
             "tokenizer": {"kind": "bpe", "vocab_size": 512}},
    "optim": {"warmup_steps": 1},
    "train": {"batch_size": 2, "eval_every": 2, "eval_batches": 1, "log_every": 1, "ckpt_every": 2,
              "progress": False, "device": "cpu"},
    "stages": [{"steps": 2}, {"steps": 2, "grow": {"d_model": 48, "ramp_steps": 1}}],
}


def _is_property(frame) -> bool:  # noqa: ANN001
    """Whether the frame runs a property's getter (``stage.model``, ``cfg.seq_len``: read as an attribute)."""
    code, names = frame.f_code, frame.f_code.co_varnames
    owner = frame.f_locals.get(names[0]) if code.co_argcount == 1 and names and names[0] == "self" else None
    return owner is not None and isinstance(getattr(type(owner), code.co_name, None), property)


def _is_config(value: object) -> bool:
    cls = type(value)
    return (isinstance(value, BaseModel) and cls.__module__ == "flm.config") or (
        cls.__module__ == "flm.stages" and cls.__name__ == "Stage")


def trace_path(out: Path) -> list[tuple[str, str, str]]:
    """(caller's module, module, function) of every flm function handed the config, at its first call, in
    call order."""
    from flm.config import config_from_dict
    from flm.train.run import run_plan

    plan = json.loads(json.dumps(PLAN))
    plan["data"]["prepared_dir"] = str(out.parent / "prepared")  # a cold cache: the data is prepared on the path
    cfg = config_from_dict(plan)
    seen: set[object] = set()
    calls: list[tuple[str, str, str]] = []

    def profile(frame, event, arg):  # noqa: ANN001 - sys.setprofile's signature
        if event != "call":
            return
        code = frame.f_code
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("flm.") or code in seen:
            return
        args = [frame.f_locals.get(n) for n in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]]
        if any(_is_config(a) for a in args):
            seen.add(code)
            caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back else ""
            calls.append((caller, module, code.co_qualname + (" (property)" if _is_property(frame) else "")))

    sys.setprofile(profile)
    try:
        run_plan(cfg, out)
    finally:
        sys.setprofile(None)
    return calls


def returns(calls: list[tuple[str, str, str]]) -> tuple[list[str], list[str]]:
    """(the path: the modules called into, repeats in a row merged; every call from another module into a
    module the path entered before)."""
    path: list[str] = []
    back: list[str] = []
    for caller, module, fn in calls:
        if caller.startswith("flm.") and caller != module and module in path:  # not pydantic's validators
            back.append(f"{caller} -> {module}.{fn}")
        if not path or path[-1] != module:
            path.append(module)
    return path, back


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS.relative_to(REPO)}")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        calls = trace_path(Path(tmp) / "run")
    path, back = returns(calls)
    _, back_calls = returns([c for c in calls if not c[2].endswith(" (property)")])
    import flm

    result = {"name": "config_path", "returns": len(back), "returns_without_property_reads": len(back_calls),
              "functions": len(calls), "path": path, "returns_at": back, "flm": str(Path(flm.__file__).parent)}
    print(json.dumps(result))
    if not args.no_save:
        RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
