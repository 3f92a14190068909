"""What a stage checks and prepares before its first step: the run folder (and its lock), the data, the
batch layout; and for `flm run` the preflight of the whole plan (``preflight_plan``), done once before the
first stage trains."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from flm.checkpoint import read_config
from flm.checkpoint.stage_init import StageInit
from flm.config import RunConfig, config_to_dict, save_config
from flm.data.loader import TokenLoader
from flm.data.prepare import PreparedData, prepare_data
from flm.data.tokenizer import Tokenizer
from flm.distributed.env import DistEnv, barrier
from flm.distributed.mesh import ParallelDims, check_layout
from flm.errors import FlmError, alike_on_every_rank, every_rank_error
from flm.growth.plan import make_plan
from flm.stages import Stage

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


@dataclass(frozen=True)
class StageData:
    """What a stage trains on, prepared and checked before its first step."""

    prepared: PreparedData  # the tokenizer and token shards
    micro: int  # rows of a micro-batch on this data-parallel rank
    accum: int  # micro-batches per optimizer step


def stage_data(cfg: RunConfig, env: DistEnv, init: StageInit | None = None) -> StageData:
    """A single stage's data (`flm train`): prepared, checked against ``init``'s tokenizer, split into micro-batches."""
    prepared = prepare_stage_data(cfg, env, init.tokenizer if init else None, init.source if init else None)
    return StageData(prepared, *batch_layout(cfg, env.dp_size))


def prepare_stage_data(cfg: RunConfig, env: DistEnv, expect: Tokenizer | None = None,
                       source: Path | None = None) -> PreparedData:
    """Tokenizer and token shards (rank 0 builds them, the others read the cache), checked against the
    model's vocabulary and (``expect``) the tokenizer of the checkpoint ``source`` the stage starts from."""
    prepared = rank0_first(  # prepare_data refuses a tokenizer larger than the model's vocabulary
        env, lambda: prepare_data(cfg.data, progress=cfg.train.progress, model=cfg.model),
        lambda: prepare_data(cfg.data, progress=False, model=cfg.model),
    )
    if expect is not None and not expect.same_tokens(prepared.tokenizer):
        raise tokenizer_mismatch(source, expect, cfg, prepared.tokenizer.describe())
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


def batch_layout(cfg: RunConfig, dp: int) -> tuple[int, int]:
    """(micro-batch rows, micro-batches per step) of one of ``dp`` data-parallel replicas, or one clear error."""
    tc = cfg.train
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
    _check_document_mask(cfg, env.dims, where)
    batch_layout(cfg, env.dp_size)


def _check_document_mask(cfg: RunConfig, dims: ParallelDims, where: str) -> None:
    if cfg.data.document_mask and dims.pp > 1:
        raise FlmError(f"data.document_mask with {where}.pp = {dims.pp}: pipeline stages do not pass document "
                       f"masks on; set data.document_mask = false or {where}.pp = 1")


def preflight_plan(cfg: RunConfig, stages: list[Stage], env: DistEnv, out_dir: Path, resume: bool) -> list[StageData]:
    """Everything that would otherwise fail in the middle of `flm run`, checked once before the first stage
    trains: the run folder (rank 0), every stage's layout against its model and batch, every growth, every
    stage's data (prepared once, checked against the model's vocabulary and read for the validation loss that
    frames each growth). Then a new run's config.toml is written. Returns each stage's data."""
    if env.is_main:
        check_plan_folder(out_dir, cfg, resume)
    barrier(env)
    with alike_on_every_rank():  # the same config and data on every rank: one line, from rank 0
        data = _check_stages(stages, env)
    if env.is_main and not resume:
        write_run_config(out_dir, cfg)
    barrier(env)
    return data


def _check_stages(stages: list[Stage], env: DistEnv) -> list[StageData]:
    """Each stage's layout (tp, pp, micro-batches), the whole growth plan (depth positions, copy sources, ...),
    each stage's data (a stage that reads the previous stage's data shares its preparation)."""
    layouts = []
    for s in stages:
        micro = s.cfg.train.micro_batch_size
        model_key = "model" if s.growth is None else f"{s.where} (grown) model"
        dims = check_layout(s.parallel, env.world_size, s.model, s.cfg.seq_len, s.parallel_where, model_key,
                            batch=s.batch_size)
        per_rank, rem = divmod(s.batch_size, dims.dp)
        if rem or (micro and per_rank % micro):
            key = "train" if s.where == "config" else s.where
            raise FlmError(
                f"stage {s.index}: batch_size {s.batch_size} does not split into {dims.dp} data-parallel ranks of "
                f"micro_batch_size {micro or per_rank}; change {key}.batch_size"
            )
        _check_document_mask(s.cfg, dims, s.parallel_where)
        layouts.append(batch_layout(s.cfg, dims.dp))
    for prev, s in zip(stages, stages[1:]):
        assert s.growth is not None
        try:
            make_plan(prev.model, s.growth)
        except FlmError as e:
            raise FlmError(f"{s.where}: {e}") from None
    data: list[StageData] = []
    for i, (s, layout) in enumerate(zip(stages, layouts)):
        shared = i > 0 and s.cfg.data == stages[i - 1].cfg.data
        prepared = data[-1].prepared if shared else prepare_stage_data(s.cfg, env)
        TokenLoader(prepared, "valid", seq_len=s.cfg.seq_len, batch_size=1)  # val loss frames every growth
        data.append(StageData(prepared, *layout))
    return data


def check_plan_folder(out_dir: Path, cfg: RunConfig, resume: bool) -> None:
    """`flm run`'s folder: a new run's must hold no other run; ``--resume`` needs this plan's own, same config."""
    if resume and (out_dir / "checkpoints").is_dir():  # `flm train` wrote it: a plan would start over beside it
        raise FlmError(f"--resume: {out_dir} holds a single-stage run (flm train); continue it with "
                       f"`flm train {out_dir / 'config.toml'} --out {out_dir} --resume`")
    if resume and (out_dir / "config.toml").is_file():
        old = read_config(out_dir / "config.toml")
        changed = _changed_keys(config_to_dict(old), config_to_dict(cfg))
        if changed:
            raise FlmError(
                f"--resume: the given config differs from {out_dir}/config.toml in {', '.join(changed[:4])}"
                f"{' ...' if len(changed) > 4 else ''}; resume with the run's own config (or drop --resume "
                "and pick a new --out)"
            )
    elif resume:
        raise FlmError(f"--resume: {out_dir} holds no run to resume (no config.toml); drop --resume")
    else:
        check_out_dir(out_dir, cfg, resume=False)


def _changed_keys(a: object, b: object, prefix: str = "") -> list[str]:
    """Dotted keys (list items as key[i]) whose values differ between two config dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b), key=str)
                for k in _changed_keys(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [k for i, (x, y) in enumerate(zip(a, b)) for k in _changed_keys(x, y, f"{prefix}[{i}]")]
    return [] if a == b else [prefix or "(the whole config)"]


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
