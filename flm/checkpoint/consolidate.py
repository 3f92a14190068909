"""``flm checkpoint consolidate CKPT OUT``: a sharded (DCP) checkpoint as a full one (``model.safetensors``,
``optim.safetensors``), for export, evaluation or any tool that reads safetensors, streamed tensor by tensor
(memory holds about one tensor, never the model)."""

from __future__ import annotations

import shutil
from pathlib import Path

from flm.checkpoint.store import (
    MANIFEST,
    SHARDED_MODEL,
    SHARDED_OPTIM,
    is_sharded,
    resolve_checkpoint,
    verify_manifest,
    write_manifest,
)
from flm.errors import FlmError
from flm.io import atomic_folder
from flm.tensorio import DcpReader, stream_tensors


def _stream(src: Path, dst: Path, progress=None) -> int:
    reader = DcpReader(src)
    entries = [(n, reader.dtype(n), reader.shapes[n]) for n in sorted(reader.shapes)]
    return stream_tensors(dst, entries, reader.read, progress)[1]


def consolidate(ckpt: Path, out: Path, progress=None) -> int:
    """Write the full checkpoint ``out`` from the sharded checkpoint ``ckpt`` (verified first); returns the
    bytes of tensors written."""
    ckpt, out = resolve_checkpoint(ckpt), Path(out)
    if not is_sharded(ckpt):
        raise FlmError(f"{ckpt} is a full checkpoint already (model.safetensors); use it as it is")
    if out.exists():
        raise FlmError(f"OUT {out} exists; pick a new folder (nothing is overwritten)")
    verify_manifest(ckpt)
    written = 0
    with atomic_folder(out) as tmp:
        for p in ckpt.iterdir():  # config, tokenizer, trainer and optimizer metadata, RNG, growth masks
            if p.is_file() and p.name != MANIFEST:
                shutil.copy2(p, tmp / p.name)
        written += _stream(ckpt / SHARDED_MODEL, tmp / "model.safetensors", progress)
        if (ckpt / SHARDED_OPTIM / ".metadata").is_file():
            written += _stream(ckpt / SHARDED_OPTIM, tmp / "optim.safetensors", progress)
        write_manifest(tmp)
    return written
