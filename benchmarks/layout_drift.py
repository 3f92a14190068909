"""How closely a multi-process layout follows one process over a progressive run, step by step.

Runs the cut-down demo-3d plan (stages of 20/31/16 steps, every training loss logged) twice: in one process
(`flm run --layout single`) and on 2 ranks under torchrun with a layout per stage (dp2 -> tp2 -> pp2, sharded
checkpoints), at the config's LR (peak 3e-3) and at a third of it; then compares every logged loss.

The question it answers: do the layouts drift apart because they compute something else (the grown model's
optimizer state, the RNG of new units or the data order sharded another way would show at the first steps
after a growth), or because fp32 rounding differences of their different summation orders grow where the
training is unstable (a high LR, gradient-norm spikes)? Per stage: the largest relative difference of any
logged loss, and the first step whose difference exceeds 1e-5.

    .venv/bin/python benchmarks/layout_drift.py [--dir /tmp/layout_drift] [--reuse]

Prints one JSON line and writes benchmarks/results/layout_drift.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAN = ["configs/demo-3d.toml", "--set", "stages[0].steps=20", "--set", "stages[1].steps=31", "--set",
        "stages[2].steps=16", "--set", "train.log_every=1", "--set", "train.eval_batches=2", "--set",
        "train.progress=false"]  # fmt: skip
LAYOUTS = ["--set", "stages[0].parallel={dp=2}", "--set", "stages[1].parallel={tp=2,dp=1}",
           "--set", "stages[2].parallel={pp=2,dp=1}"]  # fmt: skip
LRS = {"lr 3e-3": [], "lr 1e-3": ["--set", "optim.lr=1e-3", "--set", "optim.min_lr=1e-4"]}


def _run(out: Path, ranks: int, extra: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if ranks == 1:
        cmd = [sys.executable, "-m", "flm.cli", "run", *PLAN, *extra, "--layout", "single"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               "-m", "flm.cli", "run", *PLAN, *extra, *LAYOUTS]  # fmt: skip
    subprocess.run([*cmd, "--out", str(out)], cwd=REPO, env=env, check=True, timeout=7200)


def _losses(run: Path) -> dict[tuple[int, int, str], float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {(r["stage"], r["step"], k): r[k] for r in rows if "event" not in r for k in ("loss", "val_loss") if k in r}


def compare(one: Path, many: Path) -> dict[str, dict[str, object]]:
    """Per stage: the largest relative difference, where it is, and the first step past 1e-5."""
    a, b = _losses(one), _losses(many)
    out: dict[str, dict[str, object]] = {}
    for key in sorted(set(a) & set(b)):
        stage = out.setdefault(f"stage {key[0]}", {"max_rel": 0.0, "at": None, "first_step_over_1e-5": None})
        rel = abs(b[key] - a[key]) / abs(a[key])
        if rel > stage["max_rel"]:  # type: ignore[operator]
            stage |= {"max_rel": rel, "at": f"step {key[1]} {key[2]}"}
        if rel > 1e-5 and stage["first_step_over_1e-5"] is None:
            stage["first_step_over_1e-5"] = key[1]
    last = max(k for k in a if k[2] == "val_loss")
    out["final val loss"] = {"one process": round(a[last], 4), "2 ranks": round(b[last], 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/layout_drift"))
    ap.add_argument("--reuse", action="store_true", help="compare the runs already in --dir")
    args = ap.parse_args()
    result: dict[str, object] = {"benchmark": "layout_drift", "plan": " ".join(PLAN), "layouts": " ".join(LAYOUTS)}
    for name, extra in LRS.items():
        one, many = args.dir / f"{name.replace(' ', '')}-one", args.dir / f"{name.replace(' ', '')}-two"
        if not args.reuse:
            _run(one, 1, extra)
            _run(many, 2, extra)
        result[name] = compare(one, many)
    print(json.dumps(result))
    (REPO / "benchmarks" / "results" / "layout_drift.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
