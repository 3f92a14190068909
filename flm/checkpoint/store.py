"""Checkpoints: one folder per checkpoint, written atomically, readable without unpickling.

Layout (every tensor file is safetensors, every other file JSON or TOML):
    model.safetensors    full fp32 model state (tied embedding stored once)
    optim.safetensors    AdamW moments: "exp_avg/<param>", "exp_avg_sq/<param>"
    optim.json           optimizer step count and param-group hyperparameters
    growth.safetensors   MSG mask state (only while a growth ramp runs)
    rng.safetensors      RNG states (CPU and CUDA), so dropout resumes exactly
    trainer.json         step, tokens, data-loader position, schedule/ramp state
    config.toml          the run config, with `model` = this checkpoint's shape
    tokenizer files      Tokenizer.save()
    manifest.json        byte size and sha256 of every file above

A sharded checkpoint (``train.checkpoint_format = "sharded"``) holds ``model/`` and ``optim/`` instead of the two
tensor files: torch.distributed.checkpoint (DCP) folders to which every rank wrote its own shards, with the
same tensor names. DCP reshards on load, so it resumes under any other layout; ``load_checkpoint`` (and so
every command that reads a checkpoint) consolidates it in memory, and ``flm grow`` streams it tensor by tensor.

The folder is built under a temporary name and renamed into place, and ``manifest.json`` is verified on
load, so a crash mid-write or a corrupted/truncated file is detected rather than half-loaded. A full
checkpoint's tensors are gathered to rank 0, which writes them (flm.distributed.parallel_model), so a
checkpoint written by N ranks loads into M ranks, or into one process, unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flm.config import RunConfig, config_from_dict, save_config, tomllib
from flm.data.tokenizer import load_tokenizer
from flm.errors import FlmError
from flm.growth.ops import check_shapes
from flm.growth.tensorio import DcpReader
from flm.io import atomic_write, fsync_folder, is_disk_full, sha256_file
from flm.model import FLM

CKPT_SUBDIR = "checkpoints"
MANIFEST = "manifest.json"
SHARDED_MODEL, SHARDED_OPTIM = "model", "optim"  # DCP folders of a sharded checkpoint


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def _earlier_hint(folder: Path) -> str:
    """How to get past a damaged checkpoint: the one before it, when there is one."""
    if not folder.name.startswith("step_"):
        return "; use another checkpoint"
    earlier = [p for p in list_checkpoints(folder.parent.parent) if p.name < folder.name]
    if not earlier:
        return "; no earlier checkpoint in this run: train again into a new --out"
    return f"; the previous one is {earlier[-1]} (delete {folder} to --resume from it, or pass it directly)"


def manifest_text(files: dict[str, dict[str, Any]]) -> str:
    """manifest.json of a checkpoint: every file's size and sha256, and the sha256 of that table itself, so
    that a damaged manifest is told apart from a damaged file (every writer of checkpoints uses this)."""
    return json.dumps({"files": files, "files_sha256": _table_sha256(files)}, indent=1)


def _table_sha256(files: dict[str, dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def file_entries(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Manifest entries (size, sha256) of the files ``names`` (relative to ``folder``)."""
    return {n: {"bytes": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)} for n in names}


def shard_files(folder: Path) -> list[str]:
    """The files of a sharded checkpoint's DCP folders, relative to it, sorted."""
    return sorted(p.relative_to(folder).as_posix() for sub in (SHARDED_MODEL, SHARDED_OPTIM)
                  for p in (folder / sub).glob("*") if p.is_file())


def write_manifest(folder: Path, hashed: dict[str, dict[str, Any]] | None = None) -> None:
    """Size and sha256 of every file of the checkpoint, those in its DCP shard folders too; ``hashed``: entries
    the caller computed already (the ranks hash the shard files they are given, ``shard_files``)."""
    hashed = hashed or {}
    names = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST]
    files = {n: hashed[n] if n in hashed else file_entries(folder, [n])[n] for n in names}
    atomic_write(folder / MANIFEST, manifest_text(files))


def is_sharded(folder: Path) -> bool:
    """Whether ``folder`` is a sharded (DCP) checkpoint."""
    return (Path(folder) / SHARDED_MODEL / ".metadata").is_file()


def staging_folder(folder: Path) -> Path:
    """Where the ranks write a sharded checkpoint's shards before ``save_checkpoint(..., staged=)`` finishes it:
    one name for every rank (a per-process name would split the shards)."""
    return Path(folder).parent / f".tmp-{Path(folder).name}-sharded"


def check_shards(folder: Path) -> None:
    """Every shard file the DCP metadata of ``folder`` names is there (rank 0 checks before the manifest)."""
    for sub in (SHARDED_MODEL, SHARDED_OPTIM):
        d = Path(folder) / sub
        if not (d / ".metadata").is_file():
            continue
        storage = dcp.FileSystemReader(str(d)).read_metadata().storage_data or {}
        missing = sorted({info.relative_path for info in storage.values()} - {f.name for f in d.iterdir()})
        if missing:
            raise FlmError(
                f"{d}: shard files {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} are missing: the "
                "ranks wrote where rank 0 cannot see; put --out on a file system every node shares"
            )


def sharded_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a sharded checkpoint's model, from its DCP metadata (nothing else read)."""
    return DcpReader(Path(folder) / SHARDED_MODEL).shapes


def _read_dcp(path: Path) -> dict[str, torch.Tensor]:
    if not (path / ".metadata").is_file():
        return {}
    reader = DcpReader(path)
    return reader.read_many(sorted(reader.shapes))


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """File name -> {"bytes", "sha256"} of a checkpoint's manifest. The manifest must read back exactly as it was
    written (every writer uses ``json.dumps(..., indent=1)``), so a damaged byte anywhere in it is caught too,
    even one that leaves valid JSON behind."""
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise FlmError(f"{folder}: not a complete checkpoint (no {MANIFEST}){_earlier_hint(folder)}")
    raw = mpath.read_bytes()
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        if json.dumps(manifest, indent=1).encode() != raw:
            raise ValueError("it is not as written")
        if set(manifest) != {"files"} and manifest.get("files_sha256") != _table_sha256(files):  # {"files"}: older
            raise ValueError("its own checksum fails")
        for meta in files.values():
            int(meta["bytes"]), str(meta["sha256"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise FlmError(f"checkpoint {folder}: {MANIFEST} is corrupt ({e}){_earlier_hint(folder)}") from None
    return files


def verify_manifest(folder: Path, full: bool = True, share: tuple[int, int] = (0, 1)) -> dict[str, dict[str, Any]]:
    """Every file the manifest lists is there with its size and (``full``) its sha256; one line naming the
    damaged file and the checkpoint before it otherwise. Returns the manifest's files. ``share`` = (i, n):
    check only every n-th file from the i-th, so that n ranks split the hashing of a sharded checkpoint."""
    files = read_manifest(folder)
    for name, meta in list(files.items())[share[0] :: share[1]]:
        p = folder / name
        if not p.is_file():
            raise FlmError(f"checkpoint {folder}: {name} is missing (incomplete){_earlier_hint(folder)}")
        if p.stat().st_size != meta["bytes"]:
            raise FlmError(
                f"checkpoint {folder}: {name} is {p.stat().st_size} bytes, manifest says {meta['bytes']} "
                "(truncated or corrupt)" + _earlier_hint(folder)
            )
        if full and sha256_file(p) != meta["sha256"]:
            raise FlmError(
                f"checkpoint {folder}: {name} fails its sha256 check (corrupt)" + _earlier_hint(folder)
            )
    return files


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise FlmError(f"{path}: cannot read tensors ({e}); the checkpoint is corrupt") from None


@dataclass
class CheckpointData:
    """What a training loop saves and restores. Tensors are full (unsharded) and on CPU."""

    model: dict[str, torch.Tensor]
    optim_tensors: dict[str, torch.Tensor]
    optim_meta: dict[str, Any]
    trainer: dict[str, Any]
    growth: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]


def save_checkpoint(folder: Path, data: CheckpointData, cfg: RunConfig, tokenizer: Any | None,
                    staged: Path | None = None, hashed: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write ``data`` to ``folder`` atomically (temp folder, then rename). ``staged``: the folder where the
    ranks already wrote a sharded checkpoint's ``model/`` and ``optim/`` (``staging_folder``); ``data`` then
    carries no model or moment tensors; ``hashed``: the manifest entries of its shard files, if known."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = staged or folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    if staged is None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        if staged is None:
            _save_tensors(data.model, tmp / "model.safetensors")
        else:
            check_shards(tmp)
        if data.optim_tensors:
            _save_tensors(data.optim_tensors, tmp / "optim.safetensors")
        atomic_write(tmp / "optim.json", json.dumps(data.optim_meta, indent=1))
        if data.growth:
            _save_tensors(data.growth, tmp / "growth.safetensors")
        if data.rng:
            _save_tensors(data.rng, tmp / "rng.safetensors")
        atomic_write(tmp / "trainer.json", json.dumps(data.trainer, indent=1))
        save_config(cfg, tmp / "config.toml")
        if tokenizer is not None:
            tokenizer.save(tmp)
        fsync_folder(tmp)
        write_manifest(tmp, hashed)
        if folder.exists() and not (folder / MANIFEST).is_file():  # not one this run completed: keep it aside
            folder.rename(folder.parent / f".incomplete-{folder.name}-{os.getpid()}")
        if folder.exists():
            old = folder.parent / f".old-{folder.name}-{os.getpid()}"
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)
        fsync_folder(folder.parent, files=False)  # the rename itself
    except BaseException as e:
        full = is_disk_full(e, tmp)  # before the space is freed: some writers report a full disk as a short write
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise checkpoint_disk_full(folder, e) from None
        raise
    return folder


def checkpoint_disk_full(folder: Path, e: BaseException) -> FlmError:
    """The one line for a checkpoint write that ran out of space (its temporary folder already removed)."""
    quota = " (disk quota exceeded)" if isinstance(e, OSError) and e.errno == errno.EDQUOT else ""
    kept = latest_checkpoint(Path(folder).parent.parent)
    return FlmError(
        f"no space left on the device writing checkpoint {folder}{quota}; nothing half-written is left, the "
        f"newest complete checkpoint is {kept if kept else 'none'}: free space, then --resume"
    )


def load_checkpoint(folder: Path, verify: bool = True, tensors: bool = True) -> tuple[CheckpointData, RunConfig]:
    """Everything a checkpoint holds, full tensors on CPU (a sharded checkpoint consolidated); ``tensors=False``
    leaves the model and moments on disk (read shard by shard, or tensor by tensor, by the caller)."""
    folder = Path(folder)
    if verify:
        verify_manifest(folder)
    cfg = read_config(folder / "config.toml")

    def opt(name: str) -> dict[str, torch.Tensor]:
        p = folder / name
        return _load_tensors(p) if p.is_file() else {}

    if not tensors:
        model, moments = {}, {}
    elif is_sharded(folder):  # consolidated in memory
        model, moments = _read_dcp(folder / SHARDED_MODEL), _read_dcp(folder / SHARDED_OPTIM)
    else:
        model, moments = _load_tensors(folder / "model.safetensors"), opt("optim.safetensors")
    data = CheckpointData(
        model=model,
        optim_tensors=moments,
        optim_meta=json.loads((folder / "optim.json").read_text()),
        trainer=json.loads((folder / "trainer.json").read_text()),
        growth=opt("growth.safetensors"),
        rng=opt("rng.safetensors"),
    )
    return data, cfg


def read_config(path: Path) -> RunConfig:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise FlmError(f"{path}: cannot read the checkpoint's config ({e})") from None
    return config_from_dict(raw, where=str(path))


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CKPT_SUBDIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = [p for p in list_checkpoints(run_dir) if (p / MANIFEST).is_file()]
    return ckpts[-1] if ckpts else None


def incomplete_checkpoints(run_dir: Path, after: Path | None) -> list[Path]:
    """Checkpoint folders without a manifest (a save killed mid-way, or a manifest deleted) newer than ``after``."""
    newer = [p for p in list_checkpoints(run_dir) if after is None or p.name > after.name]
    return [p for p in newer if not (p / MANIFEST).is_file()]


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` checkpoints; also remove what a save killed mid-way left behind
    (``.tmp-*`` / ``.old-*`` folders: one writer per run, and this runs after its save completed)."""
    for p in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)
    root = Path(run_dir) / CKPT_SUBDIR
    for pattern in (".tmp-*", ".old-*"):
        for p in root.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint folder, a run folder (-> its newest checkpoint), or an `flm run` folder (-> the newest
    checkpoint of its last stage)."""
    p = Path(path)
    if not p.exists():
        raise FlmError(f"checkpoint not found: {p} (pass a run folder or a checkpoints/step_* folder)")
    if (p / "config.json").is_file() and not (p / "config.toml").is_file():
        raise FlmError(
            f"{p} is a transformers model folder (config.json), not an flm checkpoint: convert it first with "
            f"`flm import hf {p} OUT` and pass OUT"
        )
    if (p / "model.safetensors").is_file() or is_sharded(p):
        return p
    latest = latest_checkpoint(p)
    stages = sorted((d for d in p.glob("stage*") if d.name[5:].isdigit()), key=lambda d: int(d.name[5:]))
    for stage in reversed(stages):
        latest = latest or latest_checkpoint(stage)
    if latest is None:
        raise FlmError(f"{p} holds no checkpoint (expected model.safetensors, model/ shards or {CKPT_SUBDIR}/step_*)")
    return latest


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu"):
    """(FLM, RunConfig, Tokenizer) from a run folder or a checkpoint folder, in eval mode, masks restored."""
    folder = resolve_checkpoint(path)
    verify_manifest(folder)  # full hashes: ~0.7 s per GB here (docs/reliability.md), small beside loading
    cfg = read_config(folder / "config.toml")
    model = FLM(cfg.model)
    state = _read_dcp(folder / SHARDED_MODEL) if is_sharded(folder) else _load_tensors(folder / "model.safetensors")
    check_state_shapes(model, state, folder)
    model.load_state_dict(state, strict=True)
    growth = folder / "growth.safetensors"
    if growth.is_file():
        model.load_growth_state(_load_tensors(growth))
    model.to(device).eval()
    return model, cfg, load_tokenizer(folder)


def check_state_shapes(model: torch.nn.Module, state: dict[str, torch.Tensor], where: Path | str) -> None:
    """One clear line when a state dict does not fit the model built from the config."""
    check_shapes(model.cfg, {k: tuple(v.shape) for k, v in state.items()}, str(where))  # type: ignore[arg-type]
