"""The training of one stage: a ``Trainer`` built of stateful parts (model + AdamW, LR schedule, data
loader, mask ramp, RNG, counters, metrics), each saving and restoring its own state, so a stage killed at
any point resumes bitwise from its newest checkpoint. Warmup + cosine, gradient accumulation, masked LM
loss (fused readout), periodic validation, atomic checkpoints; single process or torchrun + FSDP2.

``train_stage`` is what ``flm train`` runs; ``flm run`` calls it once per stage with the grown model's
state in ``init`` and a schedule shared across stages.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from torch import Tensor

from flm.checkpoint import (
    CKPT_SUBDIR,
    MANIFEST,
    SHARDED_MODEL,
    SHARDED_OPTIM,
    CheckpointData,
    checkpoint_disk_full,
    incomplete_checkpoints,
    is_sharded,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    sharded_shapes,
    staging_folder,
    step_name,
)
from flm.config import RunConfig
from flm.data.loader import TokenLoader
from flm.data.prepare import PreparedData
from flm.distributed.env import DistEnv, barrier, init_distributed, use_bf16
from flm.distributed.parallel_model import ParallelModel
from flm.errors import FlmError
from flm.flops import flops_per_token
from flm.growth.ops import check_shapes
from flm.growth.ramp import MaskRamp
from flm.hardware import MfuWatch, Peak, machine_peak
from flm.io import is_disk_full
from flm.progress import progress_bar
from flm.train.metrics import MetricsLog, read_metrics
from flm.train.preemption import Preempted, StopRequest
from flm.train.schedule import CosineSchedule
from flm.train.setup import (
    batch_layout,
    check_out_dir,
    check_stage_layout,
    hash_shards,
    prepare_stage_data,
    verify_checkpoint,
    write_run_config,
)
from flm.train.spike import SKIPPED, SpikeGuard, describe, roll_back
from flm.train.state import Counters, RngState, seed_everything

VAL_ROWS = 16  # sequences per validation batch, whatever the training batch or world size


@dataclass
class StageResult:
    steps: int
    tokens: int
    flops: float
    seconds: float  # training time of the stage, over all its resumes (as metrics.jsonl's "time")
    train_loss: float
    val_loss: float | None
    checkpoint: Path | None
    seconds_here: float = 0.0  # of which in this process (less after a --resume)
    tokens_before: int = 0  # tokens of the checkpoint the stage started from (`--init`, a growth), in ``tokens``


@dataclass
class StageInit:
    """Where a stage starts when it does not start from scratch (a grown model, in ``flm run``)."""

    model_state: Mapping[str, Tensor]  # full tensors; a grown stage's are built lazily (GrownTensors)
    optim_tensors: Mapping[str, Tensor] = field(default_factory=dict)
    optim_step: int = 0
    optim_param_steps: dict[str, int] = field(default_factory=dict)  # counts that differ from optim_step
    growth_state: dict[str, Tensor] = field(default_factory=dict)
    ramp: dict[str, int] | None = None
    tokens: int = 0
    flops: float = 0.0
    loader_state: dict[str, Any] | None = None
    tokenizer: Any = None  # `flm train --init`: the checkpoint's, which the prepared data must use
    source: Path | None = None  # that checkpoint


def _rank_rows(batch: tuple[Tensor, Tensor, Tensor], rank: int, world: int) -> tuple[Tensor, Tensor, Tensor]:
    """This rank's rows of a validation batch. A rank beyond the batch's rows still runs one row (FSDP2
    needs every rank in every forward), with a zero loss mask, so it adds nothing."""
    x, y, mk = batch
    if rank < x.shape[0]:
        return x[rank::world], y[rank::world], mk[rank::world]
    return x[:1], y[:1], torch.zeros_like(mk[:1])


class Validation:
    """Mean loss over the first eval_batches x VAL_ROWS validation sequences: the same set in every stage
    and for any number of ranks, so losses before and after a growth compare like for like."""

    def __init__(self, prepared: PreparedData, cfg: RunConfig, env: DistEnv) -> None:
        self.prepared, self.cfg, self.env = prepared, cfg, env
        self._rows: list[tuple[Tensor, Tensor, Tensor]] | None = None

    @staticmethod
    def available(prepared: PreparedData, cfg: RunConfig, eval_at_start: bool) -> bool:
        """Whether the stage validates: a validation set that cannot be read fails now when validation was
        asked for; with eval_every = 0 and readable data, one validation loss at the end."""
        asked = bool(cfg.train.eval_every or eval_at_start)
        try:
            TokenLoader(prepared, "valid", seq_len=cfg.seq_len, batch_size=1)
        except FlmError:
            if asked:
                raise
            return False
        return True

    def __call__(self, model: ParallelModel) -> float:
        env = self.env
        if self._rows is None:  # every replica reads the whole fixed set and keeps rows r, r + dp, ...
            vl = TokenLoader(self.prepared, "valid", seq_len=self.cfg.seq_len, batch_size=VAL_ROWS, seed=0)
            batches = vl.valid_batches(self.cfg.train.eval_batches)
            self._rows = [_rank_rows(b, env.dp_rank, env.dp_size) for b in batches]
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=env.device)
        for x, y, mk in self._rows:
            total[0] += model.eval_loss(x, y, mk)
            total[1] += mk.sum().double()
        model.train()
        env.sum_over_dp(total)
        return float(total[0] / total[1].clamp_min(1))


class Trainer:
    """One stage's training. Parts: ``model`` (a ``ParallelModel``) + ``optimizer``, ``schedule``,
    ``loader``, ``ramp``, ``rng``, ``counters``, ``metrics``. Build it, ``restore`` a checkpoint or
    ``start_from`` a grown model, then ``fit``."""

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: Path,
        *,
        env: DistEnv,
        stage: int = 0,
        schedule: Callable[[int], float] | None = None,
        ckpt_dir: Path | None = None,
        eval_at_start: bool = False,
        init: StageInit | None = None,
    ) -> None:
        tc, oc = cfg.train, cfg.optim
        self.cfg, self.env, self.stage = cfg, env, stage
        self.ckpt_dir = ckpt_dir or out_dir
        self.eval_at_start = eval_at_start
        self.bf16 = use_bf16(tc, env.device)
        self.prepared = prepare_stage_data(cfg, env, init.tokenizer if init else None, init.source if init else None)
        self.micro, self.accum = batch_layout(cfg, env)
        self.validate = Validation.available(self.prepared, cfg, eval_at_start)
        self.validation = Validation(self.prepared, cfg, env)
        # measured (when neither set nor cached) before seeding: it draws numbers
        peak = Peak(tc.peak_flops, "train.peak_flops") if tc.peak_flops else machine_peak(env.device)
        self.mfu = MfuWatch(peak.flops * env.world_size, peak.source, enabled=env.is_main)
        seed_everything(tc.seed)  # dropout; the weights come from per-tensor seeds (or ``init``)
        eos = self.prepared.tokenizer.eos_id if cfg.data.document_mask else None
        self.model = ParallelModel(cfg.model, env, tc, seed=tc.seed, bf16=self.bf16, document_eos=eos,
                                   state=init.model_state if init else None, growth=init.growth_state if init else None)
        groups = self.model.param_groups(oc.lr, oc.weight_decay)
        # fused: one kernel per step over all tensors (~5x less optimizer time on CPU than foreach; DTensor-aware)
        self.optimizer = torch.optim.AdamW(
            groups, lr=oc.lr, betas=oc.betas, eps=oc.eps, weight_decay=oc.weight_decay, fused=True
        )
        self.schedule = schedule or CosineSchedule(oc.lr, oc.min_lr, oc.warmup_steps, oc.decay_steps or tc.steps)
        self.loader = TokenLoader(self.prepared, "train", seq_len=cfg.seq_len, batch_size=self.micro,
                                  rank=env.dp_rank, world_size=env.dp_size, seed=tc.seed)
        self.ramp = MaskRamp(0)
        self.spike = SpikeGuard(tc.spike)
        self.rng = RngState()
        self.counters = Counters()
        self.metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=env.is_main, tensorboard_dir=out_dir / "tb")
        self.flops_per_token = flops_per_token(cfg.model, cfg.seq_len)
        self.tokens_per_step = tc.batch_size * cfg.seq_len
        self.last_loss, self.val_loss, self.last_ckpt = math.nan, None, None
        self._pending: tuple | None = None  # a checkpoint whose shards are still being written
        self._async_group: dist.ProcessGroup | None = None
        self._t_start = time.perf_counter()
        self._tokens_before = 0
        if init is not None:
            self._continue_from(init)

    # ----- state ------------------------------------------------------------------------------------------
    def _continue_from(self, init: StageInit) -> None:
        """Moments, counters, data position and mask ramp of a grown (or ``--init``) model."""
        self.ramp = MaskRamp.from_state(init.ramp) if init.ramp else MaskRamp(0)
        self.counters.tokens, self.counters.flops = init.tokens, init.flops
        self._tokens_before = init.tokens
        self.model.load_optim_state(self.optimizer, init.optim_tensors, init.optim_step, init.optim_param_steps)
        if init.loader_state and self.loader.continues(init.loader_state):
            self.loader.load_state_dict(init.loader_state)  # the next stage reads on where the last one stopped
        elif init.loader_state and self.loader.carry_over(init.loader_state):
            pass  # a stage with its own mixture: the sources it shares with the last stage read on
        elif init.loader_state and self.env.is_main:
            print(  # e.g. `flm train --init` on other data: a fresh stream, not an error
                "note: the initial checkpoint was trained on other data (or another train.seed or seq_len); "
                "this stage reads its data from the start",
                file=sys.stderr,
            )
        self.ramp.apply(self.model)

    def restore(self, folder: Path) -> None:
        """Every part's state from a checkpoint of this stage (``--resume``)."""
        sharded = is_sharded(folder)
        verify_checkpoint(self.env, folder)  # the ranks split the hashing
        data, saved_cfg = load_checkpoint(folder, verify=False, tensors=not sharded)
        if saved_cfg.model != self.cfg.model:
            raise FlmError(
                f"--resume: checkpoint {folder} has model {saved_cfg.model.shape()}, the config asks for "
                f"{self.cfg.model.shape()}; resume with the run's own config"
            )
        shapes = sharded_shapes(folder) if sharded else {k: tuple(v.shape) for k, v in data.model.items()}
        check_shapes(self.cfg.model, shapes, str(folder))
        if data.growth:
            self.model.load_growth_state(data.growth)
        else:
            self.model.end_growth()
        step, steps = int(data.optim_meta.get("step", 0)), data.optim_meta.get("param_steps")  # per-tensor counts
        if sharded:
            self.model.load_sharded(folder / SHARDED_MODEL, folder / SHARDED_OPTIM, self.optimizer, step, steps)
            return self._restore_rest(folder, data)
        self.model.load_model_state(data.model)
        self.model.load_optim_state(self.optimizer, data.optim_tensors, step, steps)
        self._restore_rest(folder, data)

    def _restore_rest(self, folder: Path, data: CheckpointData) -> None:
        """Counters, data position, ramp, RNG and metrics of a checkpoint (whatever holds the tensors)."""
        tr = data.trainer
        self.counters.load_state_dict(tr)
        if self.counters.step > self.cfg.train.steps:
            raise FlmError(
                f"--resume: {folder} is at step {self.counters.step}, past train.steps = {self.cfg.train.steps}; "
                "raise train.steps to train further"
            )
        self.loader.load_state_dict(tr["loader"])
        self.spike.load_state_dict(tr.get("spike"))
        self.ramp = MaskRamp.from_state(tr["ramp"]) if tr.get("ramp") else MaskRamp(0)
        if data.rng:
            self.rng.load_state_dict(data.rng)
        self.metrics.truncate_after(self.counters.step, self.stage)
        self.last_ckpt = folder
        if self.counters.step >= self.cfg.train.steps:  # a finished stage: report what it ended with
            self.last_loss = float(tr.get("train_loss", math.nan))
            records = read_metrics(self.metrics.path)
            self.val_loss = next((r["val_loss"] for r in reversed(records) if "val_loss" in r), None)

    def save(self) -> Path:
        """A checkpoint of every part at the current step: full tensors gathered to rank 0, or each rank's
        shards (``train.checkpoint_format = "sharded"``, in the background with ``train.async_checkpoint``:
        the checkpoint is complete, and counts as the newest, once ``finish_save`` has run); the rest
        (counters, loader, ramp, RNG) rank 0 writes."""
        self.finish_save()
        tc, at = self.cfg.train, self.counters.step
        folder = Path(self.ckpt_dir) / CKPT_SUBDIR / step_name(at)
        staged, futures = None, []
        if tc.checkpoint_format == "sharded":
            staged = staging_folder(folder)
            if self.env.is_main:
                shutil.rmtree(staged, ignore_errors=True)
                staged.mkdir(parents=True)
            barrier(self.env)
            try:
                futures = self.model.save_sharded(staged / SHARDED_MODEL, staged / SHARDED_OPTIM, self.optimizer,
                                                  background=self._save_group() if tc.async_checkpoint else None)
            except BaseException as e:
                self._drop_failed_shards(folder, staged, e)
                raise
            model_state, optim = {}, ({}, self.model.optim_step(self.optimizer))
        else:  # collectives: every rank gathers, rank 0 gets the state
            model_state, optim = self.model.full_model_state(), self.model.full_optim_state(self.optimizer)
        growth, steps = self.model.full_growth_state(), self.model.optim_steps(self.optimizer)
        data = None
        if self.env.is_main:
            assert model_state is not None and optim is not None and growth is not None
            seconds = self.counters.seconds + time.perf_counter() - self._t_start
            trainer = {"stage": self.stage, **self.counters.state_dict(), "seconds": seconds,
                       "train_loss": self.last_loss, "ramp": self.ramp.state_dict() if self.ramp.total else None,
                       "loader": self.loader.state_dict(),  # global position: the same on every rank
                       "spike": self.spike.state_dict()}
            data = CheckpointData(
                model=model_state, optim_tensors=optim[0],
                optim_meta={**(steps or {}), "lr": self.schedule(max(at - 1, 0))},
                trainer=trainer, growth=growth, rng=self.rng.state_dict(),
            )
        self._pending = (folder, staged, data, futures)
        if not futures:
            self.finish_save()
        return folder

    def finish_save(self) -> None:
        """Complete the checkpoint being written: wait for its shards on every rank, then rank 0 writes the
        rest and the manifest and renames the folder into place (only now is it the newest checkpoint)."""
        if self._pending is None:
            return
        folder, staged, data, futures = self._pending
        self._pending = None
        try:
            for f in futures:
                f.result()  # a failed background write raises here, at the latest when the stage ends
        except BaseException as e:
            self._drop_failed_shards(folder, staged, e)
            raise
        barrier(self.env)
        hashed = hash_shards(self.env, staged) if staged is not None else None  # collective: ranks split it
        if data is not None:
            save_checkpoint(folder, data, self.cfg, self.prepared.tokenizer, staged=staged, hashed=hashed)
            prune_checkpoints(self.ckpt_dir, self.cfg.train.keep_last)
        barrier(self.env)
        self.last_ckpt = folder

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

    # ----- training ---------------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float, float] | None:
        """One optimizer step over ``accum`` micro-batches; returns (loss, lr, grad norm), or None when the
        spike guard skipped it. The loss of a micro-batch is its masked token sum over the global number of
        loss tokens, so the gradients are those of the mean over the whole global batch (FSDP2 averages over
        the dp replicas: hence the / dp)."""
        env, step = self.env, self.counters.step
        lr = self.schedule(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        batches = [next(self._it) for _ in range(self.accum)]
        count = torch.tensor(float(sum(float(mk.sum()) for _, _, mk in batches)), device=env.device)
        denom = env.sum_over_dp(count).clamp_min(1.0) / env.dp_size
        loss_sum = self.model.forward_backward(batches, denom)
        grad_norm = self.model.clip_grad_norm_(self.cfg.optim.clip)
        loss = float(env.sum_over_dp(loss_sum)) / env.dp_size  # the same on every rank: they all judge alike
        reason = self.spike.judge(loss, float(grad_norm))
        if reason is not None:
            self.optimizer.zero_grad(set_to_none=True)
            self._skip(reason, loss, float(grad_norm))
            return None
        if self.ramp.active and self.ramp.done_steps == 0:  # m = 0: new blocks' first AdamW step waits
            self.model.drop_silent_grads(self.optimizer)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ramp.step(self.model)
        self.counters.advance(self.tokens_per_step, self.flops_per_token)
        if not math.isfinite(loss):
            raise FlmError(
                f"loss became {loss} at step {self.counters.step}; lower optim.lr or raise optim.warmup_steps"
            )
        return loss, lr, float(grad_norm)

    def _skip(self, reason: str, loss: float, grad_norm: float) -> None:
        """Log a refused step (metrics.jsonl, report.md), with where the data stream stood; ``action =
        "rollback"`` first goes back to the last good checkpoint, past the bad batch (flm.train.spike.roll_back)."""
        c, at = self.counters, self.counters.step + 1
        record = {"stage": self.stage, "step": c.step, "spike_step": at, "event": SKIPPED, "reason": reason,
                  "spike_loss": loss, "spike_grad_norm": grad_norm, "tokens": c.tokens, "flops": c.flops,
                  "data": self.loader.state_dict()}
        if self.spike.rolls_back:
            self.finish_save()  # a checkpoint still being written is the last good one
            record |= roll_back(self.spike, self.loader, c, self.metrics, self.restore, self.last_ckpt)
        self.metrics.write(record)
        if self.env.is_main:
            print(describe(record), file=sys.stderr)
        self.spike.count(at, reason)

    def evaluate(self) -> float:
        self.val_loss = self.validation(self.model)
        return self.val_loss

    def _record(self, lr: float, grad_norm: float, tokens_per_s: float) -> dict[str, Any]:
        c, m = self.counters, self.cfg.model
        rec = {
            "stage": self.stage, "step": c.step, "tokens": c.tokens, "flops": c.flops, "loss": self.last_loss,
            "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s,
            "mfu": self.mfu(tokens_per_s * self.flops_per_token),
            "d_model": m.d_model, "n_layers": m.n_layers, "time": c.seconds + time.perf_counter() - self._t_start,
        }
        if self.ramp.total:
            rec["mask_m"] = self.ramp.value
        return rec

    def _log_start(self) -> None:
        """The validation loss before the first step (right after a growth: it must equal the loss before)."""
        c, m = self.counters, self.cfg.model
        self.metrics.write({"stage": self.stage, "step": 0, "tokens": c.tokens, "flops": c.flops,
                            "val_loss": self.evaluate(), "d_model": m.d_model, "n_layers": m.n_layers, "time": 0.0})

    def fit(self, stop_after: int | None = None) -> StageResult:
        """Train to ``train.steps`` (or ``stop_after``), logging, validating and checkpointing on the way.
        SIGTERM / SIGUSR1 end it after the current step, with a checkpoint, by raising ``Preempted`` (exit 0)."""
        tc, c = self.cfg.train, self.counters
        self.model.train()
        self._it = iter(self.loader)
        self._t_start = time.perf_counter()
        if self.eval_at_start and c.step == 0:
            self._log_start()
        window, tokens0 = Throughput(), c.tokens
        end = tc.steps if stop_after is None else min(tc.steps, stop_after)
        shown = tc.progress and self.env.is_main
        bar_cm = progress_bar("step", tc.steps, completed=c.step, enabled=shown, transient=False, console=Console())
        stopped = None
        with bar_cm as bar, self._say_where_on_interrupt(), StopRequest(self.env) as stop:
            while c.step < end:
                done = self.train_step()
                if done is None:  # skipped by the spike guard: on to the next batch
                    continue
                self.last_loss, lr, grad_norm = done
                window.add(self.tokens_per_step)
                final = c.step == tc.steps
                ramp = c.step <= self.ramp.total  # a growth ramp: every loss, 4 validations (its loss bump, run.py)
                do_eval = self.validate and (bool(tc.eval_every) and c.step % tc.eval_every == 0 or final
                                             or ramp and c.step % max(1, self.ramp.total // 4) == 0)
                if c.step % tc.log_every == 0 or do_eval or final or ramp:
                    rec = self._record(lr, grad_norm, window.rate())
                    if do_eval:
                        rec["val_loss"] = self.evaluate()
                    self.metrics.write(rec)
                rate = (c.tokens - tokens0) / max(time.perf_counter() - self._t_start, 1e-9)
                bar.update(completed=c.step, description=_desc(self.stage, self.last_loss, self.val_loss),
                           info=f"{rate:,.0f} tok/s")
                saves = bool(tc.ckpt_every and c.step % tc.ckpt_every == 0) or final
                if saves:
                    self.save()
                if stop.agreed():  # SIGTERM / SIGUSR1 / Ctrl-C on any rank: a checkpoint at this step, then exit
                    if not saves:
                        self.save()
                    stopped = stop.name, stop.exit_code
                    break
        self.finish_save()
        self.model.close()
        if self._async_group is not None:
            dist.destroy_process_group(self._async_group)
            self._async_group = None
        self.metrics.close()
        if stopped is not None:
            self._stop_at_checkpoint(*stopped)
        here = time.perf_counter() - self._t_start
        return StageResult(steps=c.step, tokens=c.tokens, flops=c.flops, seconds=c.seconds + here,
                           train_loss=self.last_loss, val_loss=self.val_loss, checkpoint=self.last_ckpt,
                           seconds_here=here, tokens_before=self._tokens_before)

    def _stop_at_checkpoint(self, why: str, code: int) -> None:
        """Say where a preempted stage stopped, then end the process with exit code ``code``."""
        if self.env.is_main:
            print(f"stopped by {why} after step {self.counters.step}: checkpoint {self.last_ckpt}; "
                  "--resume continues from it", flush=True)
        raise Preempted(code)

    @contextlib.contextmanager
    def _say_where_on_interrupt(self):
        """A second Ctrl-C: say what is kept (no checkpoint is written mid-step: the saved state must be exact)."""
        try:
            yield
        except KeyboardInterrupt:
            if not self.env.distributed:  # complete a background save (under torchrun the others may be gone)
                self.finish_save()
            if self.env.is_main:
                ckpt = self.last_ckpt
                kept = f"the newest checkpoint is {ckpt}; --resume continues from it" if ckpt else (
                    "no checkpoint was written yet (train.ckpt_every sets how often); --resume restarts the stage"
                )
                print(f"interrupted at step {self.counters.step}: {kept}", file=sys.stderr)
            raise


class Throughput:
    """Tokens per second since the previous reading."""

    def __init__(self) -> None:
        self.t, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.tokens / max(now - self.t, 1e-9)
        self.t, self.tokens = now, 0
        return rate


def train_stage(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    env: DistEnv | None = None,
    stage: int = 0,
    init: StageInit | None = None,
    schedule: Callable[[int], float] | None = None,
    ckpt_dir: Path | None = None,
    save_config_file: bool = True,
    stop_after: int | None = None,
    eval_at_start: bool = False,
) -> StageResult:
    """Train ``cfg.model`` for ``cfg.train.steps`` optimizer steps into ``out_dir`` (checkpoints in
    ``ckpt_dir``, default out_dir), from scratch, from ``init``, or (``resume``) from the newest checkpoint."""
    out_dir = Path(out_dir)
    env = env or init_distributed(cfg.train, cfg.parallel)
    check_stage_layout(cfg, env)  # before anything is written
    if save_config_file:
        check_out_dir(out_dir, cfg, resume)  # read-only: every rank checks
    trainer = Trainer(cfg, out_dir, env=env, stage=stage, schedule=schedule, ckpt_dir=ckpt_dir,
                      eval_at_start=eval_at_start, init=init)
    if init is not None and stage > 1 and env.is_main:  # a growth of `flm run`: say so in a log too
        print(f"stage {stage}: grown to {_shape(cfg)}, continuing at {init.tokens:,} tokens", flush=True)
    latest = latest_checkpoint(trainer.ckpt_dir) if resume else None
    if resume and env.is_main:
        for folder in incomplete_checkpoints(trainer.ckpt_dir, after=latest):
            print(f"note: {folder} is incomplete (no {MANIFEST}); resuming from "
                  f"{latest or 'the start of the stage'}; it is kept, moved aside, when this step is saved again",
                  file=sys.stderr)
    if latest is not None:
        trainer.restore(latest)
    else:
        trainer.metrics.truncate_after(-1, stage)  # a resume before the first checkpoint starts the stage over
    if save_config_file and env.is_main:  # on a resume too: config.toml is what this continuation runs
        write_run_config(out_dir, cfg)
    return trainer.fit(stop_after)


def _desc(stage: int, loss: float, val: float | None) -> str:
    head = f"stage {stage} " if stage else ""
    return f"{head}loss {loss:.3f}" + (f" val {val:.3f}" if val is not None else "")


def _shape(cfg: RunConfig) -> str:
    return ", ".join(f"{k} {v}" for k, v in cfg.model.shape().items())
