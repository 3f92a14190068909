"""Start-up time of the `flm` command: `flm --help` and `flm cost configs/flm-101b.toml`, best of N runs
each, for this tree and (``--base DIR``, e.g. an older checkout) another, interleaved so that both see the same
machine load. Prints one JSON line and writes benchmarks/results/startup.json.

    python benchmarks/startup.py [--base /path/to/old/flm/checkout] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"help": ["--help"], "cost": ["cost", "configs/flm-101b.toml"]}


def _once(tree: Path, argv: list[str]) -> float:
    env = os.environ | {"PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flm.cli", *argv], cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=None, help="another flm checkout to compare with")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    trees = {"this": REPO} | ({"base": args.base.resolve()} if args.base else {})
    best: dict[str, dict[str, float]] = {t: {c: float("inf") for c in COMMANDS} for t in trees}
    for _ in range(args.runs):
        for cmd, argv in COMMANDS.items():
            for name, tree in trees.items():  # interleaved: both trees see the same load
                best[name][cmd] = min(best[name][cmd], _once(tree, argv))
    result = {"benchmark": "startup", "runs": args.runs, "seconds": best}
    if "base" in best:
        result["speedup"] = {c: round(best["base"][c] / best["this"][c], 2) for c in COMMANDS}
    out = REPO / "benchmarks" / "results" / "startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
