"""Chaos: SIGKILL a small two-stage `flm run` (one growth) at N seeded random moments, `--resume` it each time,
and compare the end with an uninterrupted run's, bitwise.

The moments are aimed at phases, in the order a run meets them: data preparation (the token cache is built
anew for the killed run), training steps, checkpoint writes, the growth between the stages, and uniformly
random times (Python start-up included). Each `flm run` runs under a small probe (PROBE below) that writes a
line to a log when the process enters a phase; the driver waits for the phase it aims at, sleeps a random
fraction of that phase's length in the reference run, and kills the whole process group (as a scheduler
does). The phase a kill really hit is the last line of the log when the process died.

After every kill, every complete checkpoint written so far (all tensors, bitwise; trainer.json but its
wall-clock field) and every metrics.jsonl row (without time, tokens_per_s and mfu) must equal the reference's;
a kill counts as resumed bitwise when the state after its resume (seen at the next kill, or at the end) does.
At the end the two runs must have the same checkpoints, the same metrics.jsonl, the same token cache.

    .venv/bin/python benchmarks/chaos.py [--kills 20] [--seed 0] [--dir /tmp] [--keep]

Prints one JSON line and writes benchmarks/results/chaos.json (with the list of kills).
tests/train/test_chaos.py runs a 3-kill version of the same (`chaos(...)`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from flm.checkpoint import MANIFEST, list_checkpoints
from flm.config import config_from_dict, dump_toml
from flm.hardware import machine_key
from flm.io import atomic_write
from flm.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "chaos.json"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1"}
WALL_CLOCK = ("time", "tokens_per_s", "mfu", "seconds", "created")  # fields that differ between equal runs
LAUNCH_TIMEOUT_S = 300.0

# Runs the real CLI in the child; marks each phase it enters ("<monotonic time> <phase> <stage>") in argv[1].
PROBE = r"""
import sys, time
log = open(sys.argv[1], "a", buffering=1)
now = {"key": None, "stage": 0}
def mark(phase, stage=None):
    now["stage"] = now["stage"] if stage is None else stage
    key = f"{phase} {now['stage']}"
    if key != now["key"]:
        now["key"] = key
        log.write(f"{time.monotonic():.6f} {key}\n")
mark("startup")
from flm.cli import main
from flm.checkpoint import manager
from flm.train import loop, run, setup
def wrap(owner, name, phase, after=None, stage=None):
    real = getattr(owner, name)
    def wrapped(*args, **kwargs):
        mark(phase, stage(args) if stage else None)
        out = real(*args, **kwargs)
        if after:
            mark(after)
        return out
    setattr(owner, name, wrapped)
wrap(setup, "prepare_data", "data", after="setup")  # the plan preflight prepares the data
wrap(run, "_grown_init", "growth", stage=lambda a: a[1].index)  # until the grown stage's first eval
wrap(loop.Trainer, "evaluate", "eval", after="train", stage=lambda a: a[0].stage)
wrap(loop.Trainer, "train_step", "train", stage=lambda a: a[0].stage)
wrap(manager, "save_checkpoint", "checkpoint", after="train")
wrap(run, "write_report", "report")
code = main(sys.argv[2:])
mark("exit")
sys.exit(code)
"""


@dataclass(frozen=True)
class Mark:
    t: float
    phase: str
    stage: int


@dataclass
class Kill:
    target: str  # what it aimed at: "data", "checkpoint 1", "growth", "train 2", "random"
    phase: str  # where the process was when it died
    stage: int
    after_s: float  # seconds after its launch
    torn_checkpoint: bool  # it left a checkpoint's temporary folder behind


@dataclass
class Timing:
    """Phase lengths of the uninterrupted run (seconds), what the kills aim within."""

    startup: float  # launch to the first training step
    phase: dict[str, float]  # "data", "growth", "checkpoint 1", ...: median length
    step: dict[int, float]  # per stage: seconds per training step


def plan_config(root: Path, steps: tuple[int, int] = (30, 30), ckpt_every: int = 5) -> Path:
    """A tiny plan (d_model 32 -> 64) on the bundled corpus, every checkpoint kept, written to root/plan.toml."""
    data = REPO / "data" / "pd-english"
    cfg = {
        "name": "chaos",
        "model": {"vocab_size": 512, "d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 32},
        "data": {"train": [{"path": str(data / "train.jsonl.gz")}], "valid": [{"path": str(data / "valid.jsonl.gz")}],
                 "tokenizer": {"kind": "bpe", "vocab_size": 512}, "prepared_dir": str(root / "prepared"),
                 "max_chars": 200_000, "workers": 1},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
        "train": {"batch_size": 4, "eval_every": 10, "eval_batches": 2, "log_every": 1, "ckpt_every": ckpt_every,
                  "keep_last": 1000, "progress": False, "peak_flops": 1e11, "device": "cpu"},
        "stages": [{"steps": steps[0]}, {"steps": steps[1], "grow": {"d_model": 64, "ramp_steps": 5}}],
    }
    path = root / "plan.toml"
    path.write_text(dump_toml(config_from_dict(cfg)))
    return path


def read_marks(log: Path) -> list[Mark]:
    if not log.is_file():
        return []
    out = []
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:  # a line being written is skipped
            out.append(Mark(float(parts[0]), parts[1], int(parts[2])))
    return out


def launch(config: Path, out: Path, log: Path, resume: bool) -> subprocess.Popen:
    """`flm run` under the probe, in its own process group (killed whole, as a scheduler kills a job)."""
    cmd = [sys.executable, "-c", PROBE, str(log), "run", str(config), "--out", str(out)] + ["--resume"] * resume
    with open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)


def finish(proc: subprocess.Popen, log: Path) -> None:
    """Wait for an unkilled launch to end; it must end well."""
    try:
        code = proc.wait(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise SystemExit(f"flm run did not finish in {LAUNCH_TIMEOUT_S:.0f} s (log {log})") from None
    if code != 0:
        raise SystemExit(f"flm run failed (exit {code}):\n{log.with_suffix('.err').read_text()[-3000:]}")


def reference(config: Path, out: Path, log: Path, steps: tuple[int, int]) -> Timing:
    """The uninterrupted run, and how long each of its phases took."""
    t0 = time.monotonic()
    finish(launch(config, out, log, resume=False), log)
    marks = read_marks(log)
    lengths: dict[str, list[float]] = {}
    for a, b in zip(marks, marks[1:]):
        key = a.phase if a.phase in ("data", "growth") else f"{a.phase} {a.stage}"
        lengths.setdefault(key, []).append(b.t - a.t)
    phase = {k: sorted(v)[len(v) // 2] for k, v in lengths.items()}
    first_step = next(m.t for m in marks if m.phase == "train")
    step = {s: sum(lengths.get(f"train {s}", [0.0])) / n for s, n in enumerate(steps, start=1)}
    return Timing(startup=first_step - t0 - phase["data"], phase=phase, step=step)  # a resume finds the data


def kill_plan(n: int, rng: random.Random) -> list[str]:
    """``n`` targets in the order a run meets them: data preparation, stage 1, the growth, stage 2. Each
    stage's share cycles through checkpoint writes, training steps and random moments, shuffled."""
    data = min(n, max(1, n // 10))
    growth = min(n - data, max(1, round(n * 0.15)))
    rest = n - data - growth
    first, second = rest - rest // 2, rest // 2
    kinds = ("checkpoint", "train", "random")

    def stage(count: int, s: int) -> list[str]:
        picks = [kinds[i % 3] for i in range(count)]
        rng.shuffle(picks)
        return [k if k == "random" else f"{k} {s}" for k in picks]

    return ["data"] * data + stage(first, 1) + ["growth"] * growth + stage(second, 2)


def complete_checkpoints(stage_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in list_checkpoints(stage_dir) if (p / MANIFEST).is_file()}


def newest_step(run: Path, stage: int) -> int:
    ckpts = complete_checkpoints(run / f"stage{stage}")
    return int(max(ckpts)[len("step_"):]) if ckpts else 0


def aim(target: str, run: Path, prepared: Path, steps: tuple[int, int], ref: Timing,
        rng: random.Random) -> tuple[tuple[str, int] | None, float, str]:
    """(the phase mark to wait for, or None: from the launch; the delay after it; the target, or "random"
    where the target is behind the run already)."""
    left = [n - newest_step(run, s) for s, n in enumerate(steps, start=1)]
    if target == "data" and not any(p.is_dir() for p in prepared.glob("[!.]*")):
        return ("data", 0), rng.uniform(0, 0.8 * ref.phase["data"]), target
    if target == "growth" and newest_step(run, 2) == 0:
        return ("growth", 2), rng.uniform(0, 0.8 * ref.phase["growth"]), target
    kind, _, s = target.partition(" ")
    if kind == "checkpoint" and left[int(s) - 1] > 0:
        return ("checkpoint", int(s)), rng.uniform(0, 0.5 * ref.phase[target]), target
    if kind == "train" and left[int(s) - 1] > 0:
        return ("train", int(s)), rng.uniform(0, 0.9 * left[int(s) - 1] * ref.step[int(s)]), target
    remaining = sum(n * ref.step[s] for s, n in enumerate(left, start=1))
    return None, rng.uniform(0, 0.5 * ref.startup + 0.9 * remaining), "random"


def kill_when(proc: subprocess.Popen, log: Path, wait_for: tuple[str, int] | None, delay: float,
              launched: float) -> tuple[Mark, float] | None:
    """SIGKILL the launch ``delay`` seconds after it enters ``wait_for`` (after its start when None); the phase
    it died in and when (seconds after its launch), or None when it ended first."""
    fire_at = launched + delay if wait_for is None else None
    while proc.poll() is None:
        now = time.monotonic()
        if now - launched > LAUNCH_TIMEOUT_S:
            os.killpg(proc.pid, signal.SIGKILL)
            raise SystemExit(f"flm run hung (log {log})")
        if fire_at is None and any((m.phase, m.stage) == wait_for for m in read_marks(log)):
            fire_at = now + delay
        if fire_at is not None and now >= fire_at:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            marks = read_marks(log)
            return (marks[-1] if marks else Mark(now, "startup", 0)), now - launched
        time.sleep(0.0005)
    if proc.returncode != 0:
        raise SystemExit(f"flm run failed (exit {proc.returncode}):\n{log.with_suffix('.err').read_text()[-3000:]}")
    return None


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _without_clock(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in WALL_CLOCK}


def file_diffs(ref: Path, mine: Path) -> list[str]:
    """How ``mine`` differs from ``ref``: tensors by their bits, trainer.json but its wall clock, else bytes."""
    if not mine.is_file() or not ref.is_file():
        return [f"{mine}: only one run has it"]
    if ref.suffix == ".safetensors":
        a, b = load_file(str(ref)), load_file(str(mine))
        if a.keys() != b.keys():
            return [f"{mine}: other tensors ({sorted(a.keys() ^ b.keys())[:4]})"]
        return [f"{mine}: {k}" for k in a if not _same_bits(a[k], b[k])]
    if ref.name in ("trainer.json", "index.json"):  # a checkpoint's counters, a token cache's index
        same = _without_clock(json.loads(ref.read_text())) == _without_clock(json.loads(mine.read_text()))
    else:
        same = ref.read_bytes() == mine.read_bytes()
    return [] if same else [f"{mine}: differs"]


def run_diffs(run: Path, ref: Path, final: bool) -> list[str]:
    """How the killed-and-resumed ``run`` differs from ``ref``: its complete checkpoints (file by file; the
    manifest aside, it hashes trainer.json's wall clock) and its metrics.jsonl rows, a prefix of the reference's
    until ``final``, when both must also have the same checkpoints."""
    diffs = []
    for stage_dir in sorted(ref.glob("stage*")):
        theirs, mine = complete_checkpoints(stage_dir), complete_checkpoints(run / stage_dir.name)
        if final and theirs.keys() != mine.keys():
            diffs.append(f"{run / stage_dir.name}: checkpoints {sorted(mine)} but the reference has {sorted(theirs)}")
        for name, folder in mine.items():
            if name not in theirs:
                diffs.append(f"{folder}: not in the reference")
                continue
            files = {p.name for p in folder.iterdir()} | {p.name for p in theirs[name].iterdir()}
            for f in sorted(files - {MANIFEST}):
                diffs += file_diffs(theirs[name] / f, folder / f)
    rows = [_without_clock(r) for r in read_metrics(run / "metrics.jsonl")]
    ref_rows = [_without_clock(r) for r in read_metrics(ref / "metrics.jsonl")]
    if rows != (ref_rows if final else ref_rows[: len(rows)]):
        at = next((i for i, (a, b) in enumerate(zip(rows, ref_rows)) if a != b), min(len(rows), len(ref_rows)))
        diffs.append(f"{run}/metrics.jsonl: row {at} differs ({len(rows)} rows, the reference {len(ref_rows)})")
    return diffs


def cache_diffs(prepared: Path, ref_prepared: Path) -> list[str]:
    """The token cache built under the kills against the reference's: the same folder, the same bytes."""
    ref_dirs = {p.name: p for p in ref_prepared.glob("[!.]*")}
    dirs = {p.name: p for p in prepared.glob("[!.]*")}
    if ref_dirs.keys() != dirs.keys():
        return [f"{prepared}: token cache folders {sorted(dirs)}, the reference {sorted(ref_dirs)}"]
    return [diff for name, d in dirs.items() for f in sorted(d.rglob("*")) if f.is_file()
            for diff in file_diffs(ref_dirs[name] / f.relative_to(d), f)]


def leftovers(*folders: Path) -> list[str]:
    """What killed writes left behind (temporary or set-aside folders)."""
    pats = (".tmp-*", ".old-*", ".incomplete-*")
    return sorted(str(p.relative_to(f.parent)) for f in folders for pat in pats for p in f.rglob(pat))


def _kill_once(target: str, config: Path, run: Path, root: Path, launch_no: int, steps: tuple[int, int],
               ref: Timing, rng: random.Random) -> Kill | None:
    """One launch (resumed, but the very first), killed as ``target`` says; None when it finished first."""
    wait_for, delay, aimed = aim(target, run, root / "prepared", steps, ref, rng)
    log = root / f"launch{launch_no:02d}.log"
    staged_before = set(run.glob("stage*/checkpoints/.tmp-*"))
    launched = time.monotonic()
    proc = launch(config, run, log, resume=launch_no > 0)
    killed = kill_when(proc, log, wait_for, delay, launched)
    if killed is None:
        return None
    torn = bool(set(run.glob("stage*/checkpoints/.tmp-*")) - staged_before)  # a save this kill cut short
    return Kill(aimed, killed[0].phase, killed[0].stage, round(killed[1], 3), torn)


def chaos(root: Path, kills: int = 20, seed: int = 0, steps: tuple[int, int] = (30, 30), ckpt_every: int = 5,
          say=lambda msg: None) -> dict:
    """The whole experiment in ``root``: reference, ``kills`` kills with their resumes, the last resume to the
    end, the comparisons. Returns the result (see the module docstring)."""
    t0 = time.monotonic()
    config = plan_config(root, steps, ckpt_every)
    ref, run = root / "ref", root / "run"
    timing = reference(config, ref, root / "reference.log", steps)
    (root / "prepared").rename(root / "prepared-ref")  # the killed run builds its own token cache
    lengths = json.dumps({k: round(v, 3) for k, v in timing.phase.items()})
    say(f"reference: {time.monotonic() - t0:.1f} s; phase lengths {lengths}")
    rng = random.Random(seed)
    plan, done, credits, launches, first_diffs = kill_plan(kills, rng), [], [], 0, []
    while len(done) < kills and launches < 3 * kills + 3:
        kill = _kill_once(plan[len(done)], config, run, root, launches, steps, timing, rng)
        launches += 1
        if kill is None:
            continue  # ended before the moment came: the next launch aims again (at a random moment)
        diffs = run_diffs(run, ref, final=False)
        if done:  # the state this kill found is what the previous kill's resume wrote
            credits.append(not diffs)
        first_diffs = first_diffs or diffs
        done.append(kill)
        say(f"kill {len(done)}/{kills}: aimed at {kill.target}, hit {kill.phase} {kill.stage} after {kill.after_s} s"
            f"{' (torn checkpoint)' if kill.torn_checkpoint else ''}; {'same' if not diffs else diffs[:2]}")
    log = root / f"launch{launches:02d}.log"
    finish(launch(config, run, log, resume=launches > 0), log)
    diffs = run_diffs(run, ref, final=True) + cache_diffs(root / "prepared", root / "prepared-ref")
    credits.append(not diffs)
    return {
        "benchmark": "chaos", "kills": len(done), "resumed_bitwise": sum(credits[: len(done)]),
        "final_bitwise": not diffs, "phases": dict(Counter(k.phase for k in done)),
        "targets": dict(Counter(k.target.split()[0] for k in done)),
        "torn_checkpoints": sum(k.torn_checkpoint for k in done), "launches": launches + 1,
        "leftovers": leftovers(run, root / "prepared"), "diffs": (first_diffs + diffs)[:10],
        "steps": list(steps), "ckpt_every": ckpt_every, "seed": seed,
        "seconds": round(time.monotonic() - t0, 1), "cpu": machine_key(torch.device("cpu")),
        "kill_log": [asdict(k) for k in done],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default="/tmp", help="where the runs go (removed at the end unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the runs and the launch logs")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="flm-chaos-", dir=args.dir))
    try:
        result = chaos(root, args.kills, args.seed, say=lambda msg: print(msg, file=sys.stderr, flush=True))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    atomic_write(RESULTS, json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "kill_log"}))


if __name__ == "__main__":
    main()
