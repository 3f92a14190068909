"""``CheckpointManager``: saves and restores a training stage as one checkpoint folder, from a dict of parts
that each know their own state (``state_dict()`` / ``load_state_dict()``, torch's Stateful).

The parts and where each lands in the folder (store.py's format, unchanged since the first checkpoints):

    model      ModelState (model_state.py)  model.safetensors | model/ (DCP shards), growth.safetensors
    optimizer  torch AdamW                  optim.safetensors | optim/ (DCP shards), optim.json (step counts)
    schedule   step -> LR                   optim.json's "lr" (the LR of the step just taken)
    trainer    the stage's counters         trainer.json's top level (stage, step, tokens, flops, seconds, loss)
    ramp, loader, spike                     trainer.json["ramp"], ["loader"], ["spike"]
    rng        torch's generators           rng.safetensors
    metrics    metrics.jsonl                cut back to the checkpoint's step on a restore

A save writes full tensors gathered to rank 0 (``train.checkpoint_format = "full"``) or each rank's shards
(``"sharded"``, in a background thread with ``train.async_checkpoint``: the checkpoint is complete, and counts
as the newest, only once ``finish`` has run). Rank 0 then writes the rest and the manifest and renames the
folder into place, and the oldest beyond ``train.keep_last`` go. A restore verifies the manifest (the ranks
split the hashing) before it reads anything.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import torch.distributed as dist

from flm.checkpoint.model_state import ModelState
from flm.checkpoint.store import (
    CKPT_SUBDIR,
    MANIFEST,
    SHARDED_MODEL,
    SHARDED_OPTIM,
    CheckpointData,
    checkpoint_disk_full,
    file_entries,
    incomplete_checkpoints,
    is_sharded,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    shard_files,
    sharded_shapes,
    staging_folder,
    step_name,
    verify_manifest,
)
from flm.config import RunConfig
from flm.distributed.env import DistEnv, barrier
from flm.errors import FlmError, every_rank_error
from flm.growth.ops import check_shapes
from flm.io import is_disk_full
from flm.log import get_logger

log = get_logger(__name__)
JSON_PARTS = ("ramp", "loader", "spike")  # saved under their names in trainer.json


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


@dataclass
class _Pending:
    """A save whose shards may still be in flight: rank 0 completes it in ``finish``."""

    folder: Path
    staged: Path | None
    data: CheckpointData | None
    futures: list[Future]


class CheckpointManager:
    """Checkpoints of one stage in ``folder/checkpoints/step_*`` (see the module doc). ``parts`` holds the
    optimizer, schedule, trainer, ramp, loader, spike, rng and metrics parts; ``model`` the model's state."""

    def __init__(self, folder: Path, cfg: RunConfig, env: DistEnv, model: ModelState, parts: Mapping[str, Any],
                 tokenizer: Any) -> None:
        self.folder, self.cfg, self.env, self.model, self.tokenizer = Path(folder), cfg, env, model, tokenizer
        self.parts = dict(parts)
        self.last: Path | None = None  # the newest complete checkpoint of this stage
        self._pending: _Pending | None = None
        self._async_group: dist.ProcessGroup | None = None

    def due(self, step: int, final: bool) -> bool:
        """Whether the step just taken ends with a checkpoint: every ``train.ckpt_every`` steps, and the last."""
        every = self.cfg.train.ckpt_every
        return bool(every and step % every == 0) or final

    # ----- save -------------------------------------------------------------------------------------------
    def save(self, step: int) -> Path:
        """A checkpoint of every part at ``step`` (collective); see the module doc for full vs sharded."""
        self.finish()
        tc, folder = self.cfg.train, self.folder / CKPT_SUBDIR / step_name(step)
        optimizer = self.parts["optimizer"]
        staged, futures = None, []
        if tc.checkpoint_format == "sharded":
            staged = staging_folder(folder)
            if self.env.is_main:
                shutil.rmtree(staged, ignore_errors=True)
                staged.mkdir(parents=True)
            barrier(self.env)
            try:
                futures = self.model.save_sharded(staged / SHARDED_MODEL, staged / SHARDED_OPTIM, optimizer,
                                                  background=self._save_group() if tc.async_checkpoint else None)
            except BaseException as e:
                self._drop_failed_shards(folder, staged, e)
                raise
            model_state, optim = {}, ({}, 0)  # the moments are in the DCP shards; the counts in optim_meta
        else:  # collectives: every rank gathers, rank 0 gets the state
            model_state, optim = self.model.full_model_state(), self.model.full_optim_state(optimizer)
        growth, steps = self.model.full_growth_state(), self.model.optim_steps(optimizer)
        data = None
        if self.env.is_main:
            assert model_state is not None and optim is not None and growth is not None
            trainer = self.parts["trainer"].state_dict() | {k: self.parts[k].state_dict() for k in JSON_PARTS}
            data = CheckpointData(
                model=model_state, optim_tensors=optim[0],
                optim_meta={**(steps or {}), "lr": self.parts["schedule"](max(step - 1, 0))},
                trainer=trainer, growth=growth, rng=self.parts["rng"].state_dict(),
            )  # fmt: skip
        self._pending = _Pending(folder, staged, data, futures)
        if not futures:
            self.finish()
        return folder

    def finish(self) -> None:
        """Complete the checkpoint being written: wait for its shards on every rank, then rank 0 writes the
        rest and the manifest and renames the folder into place (only now is it the newest checkpoint)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        staged = pending.staged
        try:
            for f in pending.futures:
                f.result()  # a failed background write raises here, at the latest when the stage ends
        except BaseException as e:
            assert staged is not None  # only sharded saves run in the background
            self._drop_failed_shards(pending.folder, staged, e)
            raise
        barrier(self.env)
        hashed = hash_shards(self.env, staged) if staged is not None else None  # collective: ranks split it
        if pending.data is not None:
            save_checkpoint(pending.folder, pending.data, self.cfg, self.tokenizer, staged=staged, hashed=hashed)
            prune_checkpoints(self.folder, self.cfg.train.keep_last)
        barrier(self.env)
        self.last = pending.folder

    def _drop_failed_shards(self, folder: Path, staged: Path, e: BaseException) -> None:
        """A sharded write failed (DCP raises it on every rank): rank 0 removes the staged shards; a full disk
        becomes one line naming the newest complete checkpoint (else the caller re-raises ``e``)."""
        full = is_disk_full(e, staged)  # on every rank before any space is freed (a short write tells by that)
        barrier(self.env)
        if self.env.is_main:
            shutil.rmtree(staged, ignore_errors=True)
        if full:
            raise checkpoint_disk_full(folder, e) from None

    def _save_group(self) -> dist.ProcessGroup | bool:
        """The process group of background saves (created once, collectively), or True in one process."""
        if not self.env.distributed:
            return True
        if self._async_group is None:
            timeout = timedelta(seconds=self.cfg.parallel.timeout_s)
            self._async_group = dist.new_group(backend="gloo", timeout=timeout)
        return self._async_group

    def close(self) -> None:
        """Complete the last save, stop the writer thread and the background saves' process group."""
        self.finish()
        self.model.close()
        if self._async_group is not None:
            dist.destroy_process_group(self._async_group)
            self._async_group = None

    # ----- restore ----------------------------------------------------------------------------------------
    def latest(self, say_incomplete: bool = True) -> Path | None:
        """The newest complete checkpoint of the stage; ``say_incomplete``: note the newer incomplete ones."""
        latest = latest_checkpoint(self.folder)
        if say_incomplete and self.env.is_main:
            for folder in incomplete_checkpoints(self.folder, after=latest):
                log.warning(f"note: {folder} is incomplete (no {MANIFEST}); resuming from "
                            f"{latest or 'the start of the stage'}; it is kept, moved aside, when this step is "
                            "saved again")
        return latest

    def restore(self, folder: Path) -> None:
        """Every part's state from checkpoint ``folder`` of this stage (``--resume``, a spike's rollback)."""
        sharded = is_sharded(folder)
        verify_checkpoint(self.env, folder)  # the ranks split the hashing
        data, saved_cfg = load_checkpoint(folder, verify=False, tensors=not sharded)
        self._check_fits(folder, data, saved_cfg, sharded)
        pm, optimizer = self.model.model, self.parts["optimizer"]
        if data.growth:
            pm.load_growth_state(data.growth)
        else:
            pm.end_growth()
        step, steps = int(data.optim_meta.get("step", 0)), data.optim_meta.get("param_steps")  # per-tensor counts
        if sharded:
            self.model.load_sharded(folder / SHARDED_MODEL, folder / SHARDED_OPTIM, optimizer, step, steps)
        else:
            self.model.load_model_state(data.model)
            self.model.load_optim_state(optimizer, data.optim_tensors, step, steps)
        self._restore_small_parts(folder, data)
        self.last = folder

    def _check_fits(self, folder: Path, data: CheckpointData, saved_cfg: RunConfig, sharded: bool) -> None:
        if saved_cfg.model != self.cfg.model:
            raise FlmError(
                f"--resume: checkpoint {folder} has model {saved_cfg.model.shape()}, the config asks for "
                f"{self.cfg.model.shape()}; resume with the run's own config"
            )
        shapes = sharded_shapes(folder) if sharded else {k: tuple(v.shape) for k, v in data.model.items()}
        check_shapes(self.cfg.model, shapes, str(folder))

    def _restore_small_parts(self, folder: Path, data: CheckpointData) -> None:
        """Counters, data position, ramp, spike guard, RNG and metrics (whatever holds the tensors)."""
        tr = data.trainer
        self.parts["trainer"].load_state_dict(tr)
        step = int(tr["step"])
        if step > self.cfg.train.steps:
            raise FlmError(
                f"--resume: {folder} is at step {step}, past train.steps = {self.cfg.train.steps}; "
                "raise train.steps to train further"
            )
        for name in JSON_PARTS:
            self.parts[name].load_state_dict(tr.get(name))
        if data.rng:
            self.parts["rng"].load_state_dict(data.rng)
        self.parts["metrics"].truncate_after(step, tr.get("stage", 0))


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

