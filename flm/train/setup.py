"""What a stage checks and prepares before its first step: the run folder (and its lock), the data, the
batch layout."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch.distributed as dist

from flm.checkpoint import read_config, verify_manifest
from flm.checkpoint.store import file_entries, shard_files
from flm.config import RunConfig, save_config
from flm.data.prepare import PreparedData, prepare_data
from flm.data.tokenizer import Tokenizer, check_vocab
from flm.distributed.env import DistEnv
from flm.errors import FlmError, every_rank_error

LOCK_FILE = ".lock"  # in the run folder: the advisory lock of its one writer, with the writer's PID and host


def rank0_first(env: DistEnv, fn: Callable[[], Any], others: Callable[[], Any] | None = None) -> Any:
    """Run ``fn`` on rank 0 (it may write files), then ``others`` on the other ranks. An FlmError on rank 0
    is raised on every rank, instead of leaving the others waiting at a barrier."""
    result, err = None, None
    if env.is_main:
        try:
            result = fn()
        except FlmError as e:
            err = str(e)
    if env.distributed:
        box = [err]
        dist.broadcast_object_list(box, src=0)
        err = box[0]
    if err is not None:
        raise every_rank_error(err)
    if not env.is_main and others is not None:
        result = others()
    return result


def verify_checkpoint(env: DistEnv, folder: Path) -> None:
    """Check ``folder`` against its manifest, every rank hashing its share of the files (a sharded checkpoint
    of a big model is many files: one rank hashing them all would keep the others waiting); a damaged file
    found by any rank is raised on every rank."""
    err = None
    try:
        verify_manifest(folder, share=(env.rank, env.world_size))
    except FlmError as e:
        err = str(e)
    if env.distributed:
        errors: list[str | None] = [None] * env.world_size
        dist.all_gather_object(errors, err)
        err = next((e for e in errors if e is not None), None)
    if err is not None:
        raise every_rank_error(err)


def hash_shards(env: DistEnv, staged: Path) -> dict[str, dict[str, Any]] | None:
    """The manifest entries of a just-written sharded checkpoint's shard files, every rank hashing its share
    (collective); the union on rank 0, None elsewhere."""
    names = shard_files(staged)
    mine = file_entries(staged, names[env.rank :: env.world_size])
    if not env.distributed:
        return mine
    parts: list[dict[str, dict[str, Any]]] | None = [{}] * env.world_size if env.is_main else None
    dist.gather_object(mine, parts, dst=0)
    return {k: v for part in parts for k, v in part.items()} if parts is not None else None


def prepare_stage_data(cfg: RunConfig, env: DistEnv, expect: Tokenizer | None = None,
                       source: Path | None = None) -> PreparedData:
    """Tokenizer and token shards (rank 0 builds them, the others read the cache), checked against the
    model's vocabulary and (``expect``) the tokenizer of the checkpoint ``source`` the stage starts from."""
    prepared = rank0_first(
        env, lambda: prepare_data(cfg.data, progress=cfg.train.progress, model=cfg.model),
        lambda: prepare_data(cfg.data, progress=False, model=cfg.model),  # a BPE too big is refused before training
    )
    if expect is not None and not expect.same_tokens(prepared.tokenizer):
        raise tokenizer_mismatch(source, expect, cfg, prepared.tokenizer.describe())
    check_vocab(prepared.tokenizer, cfg.model)
    return prepared


def tokenizer_mismatch(folder: Path | None, own: Tokenizer, cfg: RunConfig, configured: str) -> FlmError:
    """--init of a checkpoint whose tokenizer is not the config's: its ids would be read as other words."""
    tok = cfg.data.tokenizer.model_dump(exclude_none=True)
    trained = " trained on the corpus" if cfg.data.tokenizer.kind == "bpe" else ""
    return FlmError(
        f"--init {folder}: the checkpoint was trained with its own tokenizer ({own.describe()}), the config asks "
        f"for another (data.tokenizer = {tok}{trained}: {configured}), whose token ids mean other words; drop "
        f"[data.tokenizer] from the config to use the checkpoint's, or set data.tokenizer.kind = 'file' and "
        f"data.tokenizer.path = '{folder}'"
    )


def batch_layout(cfg: RunConfig, env: DistEnv) -> tuple[int, int]:
    """(micro-batch rows, micro-batches per step) of this rank's data-parallel replica, or one clear error."""
    tc, dp = cfg.train, env.dp_size
    if tc.batch_size % dp:
        raise FlmError(f"train.batch_size ({tc.batch_size}) must be divisible by the {dp} data-parallel ranks")
    per_rank = tc.batch_size // dp
    micro = tc.micro_batch_size or per_rank
    if per_rank % micro:
        raise FlmError(
            f"train.micro_batch_size ({micro}) must divide the per-rank batch ({per_rank}); adjust either"
        )
    return micro, per_rank // micro


def check_stage_layout(cfg: RunConfig, env: DistEnv, where: str = "parallel", model_key: str = "model") -> None:
    """Whether ``env``'s layout can split this model and batch (tp, pp, micro-batches); one clear error."""
    env.dims.check_model(cfg.model, cfg.seq_len, where, model_key, batch=cfg.train.batch_size)
    if cfg.data.document_mask and env.dims.pp > 1:
        raise FlmError(f"data.document_mask with {where}.pp = {env.dims.pp}: pipeline stages do not pass document "
                       f"masks on; set data.document_mask = false or {where}.pp = 1")
    batch_layout(cfg, env)


def write_run_config(out_dir: Path, cfg: RunConfig) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.toml")
    except OSError as e:
        raise FlmError(f"cannot write the run folder {out_dir} ({e.strerror}); pick another --out") from None


def check_out_dir(out_dir: Path, cfg: RunConfig, resume: bool) -> None:
    """Refuse to write into a folder that holds another run; never overwrite finished work."""
    existing = out_dir / "config.toml"
    if not existing.is_file():
        if resume:
            raise FlmError(f"--resume: {out_dir} holds no run to resume (no config.toml); drop --resume")
        return
    old = read_config(existing)
    if old.stages and not cfg.stages:  # `flm train` into an `flm run` folder would replace its records
        raise FlmError(
            f"{out_dir} holds a progressive run (flm run, {len(old.stages)} stages); continue it with "
            f"`flm run {existing} --out {out_dir} --resume`, or train into another --out"
        )
    if resume:
        if old.model != cfg.model:
            raise FlmError(
                f"--resume: the run in {out_dir} has model {old.model.shape()}, the config asks for "
                f"{cfg.model.shape()}; resume with the run's own config or train into a new --out"
            )
        return
    what = "a different run" if old.model_dump() != cfg.model_dump() else "a run"
    raise FlmError(
        f"{out_dir} already holds {what} (config.toml exists); pass --resume to continue it or choose another --out"
    )


def lock_run_folder(out_dir: Path) -> int:
    """Take the run folder's advisory lock (``fcntl.flock``: the kernel drops it when the process ends, however
    it ends) and return its file descriptor; another live holder is refused at once, by PID and host."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise FlmError(f"cannot write the run folder {out_dir} ({e.strerror}); pick another --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(os.pread(fd, 4096, 0))
        os.close(fd)
        raise FlmError(
            f"{out_dir} is in use by another flm process ({holder}); wait for it to end (or stop it), "
            "or write into another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
    return fd


def _lock_holder(raw: bytes) -> str:
    try:
        who = json.loads(raw)
        return f"PID {who['pid']} on host {who['host']}"
    except (ValueError, KeyError, TypeError):  # the holder is between taking the lock and writing its name
        return "its PID is not written yet"


@contextmanager
def run_folder_lock(out_dir: Path, env: DistEnv) -> Iterator[None]:
    """Hold the lock of ``out_dir`` for the whole job (rank 0 takes it; its refusal ends every rank). A folder
    that this job created and left empty is removed again (a refused ``--resume`` leaves nothing behind)."""
    created = not out_dir.exists()
    fd = rank0_first(env, lambda: lock_run_folder(out_dir))
    try:
        yield
    finally:
        if fd is not None:
            if created and [p.name for p in out_dir.iterdir()] == [LOCK_FILE]:
                (out_dir / LOCK_FILE).unlink()
                out_dir.rmdir()
            os.close(fd)
