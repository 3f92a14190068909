"""Writing a tensor file one tensor at a time from a list of recipes, and building an output folder under a
temporary name that is renamed into place only when complete (nothing half-written, nothing overwritten)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from flm.checkpoint import MANIFEST
from flm.checkpoint.store import manifest_text
from flm.errors import FlmError
from flm.io import atomic_folder, atomic_write, sha256_file
from flm.tensorio import stream_tensors


@dataclass
class Recipe:
    """One output tensor: its name, shape, dtype, and how to make it (reads its sources when called)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], Tensor]


def write_tensors(path: Path, recipes: list[Recipe], metadata: dict[str, str] | None = None) -> tuple[str, int]:
    """Stream ``recipes`` into a safetensors file: one recipe's tensors in memory at a time.
    Returns (sha256, bytes)."""
    by_name = {r.name: r for r in recipes}
    entries = [(r.name, r.dtype, r.shape) for r in recipes]
    sha, nbytes, _ = stream_tensors(path, entries, lambda name: by_name[name].make().to(by_name[name].dtype),
                                    metadata=metadata or {"format": "pt"})
    return sha, nbytes


def write_manifest(folder: Path, known: dict[str, dict[str, object]]) -> None:
    """A checkpoint's manifest.json (flm.checkpoint's format); ``known``: files already hashed as written."""
    files = dict(known)
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name not in files and p.name != MANIFEST:
            files[p.name] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    atomic_write(folder / MANIFEST, manifest_text(dict(sorted(files.items()))))


def largest_bytes(recipes: list[Recipe]) -> int:
    """Bytes of the largest tensor the recipes make (what streaming keeps in memory, about)."""
    return max(torch.Size(r.shape).numel() * r.dtype.itemsize for r in recipes)


def refuse_existing(out: Path, what: str) -> None:
    if out.exists():
        raise FlmError(f"{what} {out} already exists; nothing is overwritten: pick a new path or delete it first")


def staged_folder(out: Path) -> AbstractContextManager[Path]:
    """A temporary folder beside ``out``, renamed to ``out`` when the block ends without error, removed
    otherwise (flm.io.atomic_folder); an existing ``out`` is refused first."""
    refuse_existing(out, "output folder")
    return atomic_folder(out)
