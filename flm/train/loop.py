"""The training of one stage: a ``Trainer`` built of stateful parts (model + AdamW, LR schedule, data
loader, mask ramp, RNG, counters, metrics) that a ``CheckpointManager`` saves and restores together, so a
stage killed at any point resumes bitwise from its newest checkpoint. Warmup + cosine, gradient accumulation,
masked LM loss (fused readout), periodic validation, atomic checkpoints; single process or torchrun + FSDP2.

``train_stage`` is what ``flm train`` runs; ``flm run`` calls it once per stage with the grown model's
state in ``init`` and a schedule shared across stages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from flm.checkpoint.manager import CheckpointManager
from flm.checkpoint.model_state import ModelState
from flm.checkpoint.stage_init import StageInit
from flm.config import RunConfig
from flm.data.loader import TokenLoader
from flm.distributed.env import DistEnv, init_distributed, use_bf16
from flm.distributed.parallel_model import ParallelModel
from flm.errors import FlmError
from flm.flops import flops_per_token
from flm.growth.ramp import MaskRamp
from flm.hardware import MfuWatch, Peak, machine_peak
from flm.log import get_logger
from flm.progress import progress_bar
from flm.train.metrics import MetricsLog, read_metrics
from flm.train.preemption import StopRequest, say_where_on_interrupt, stop_at_checkpoint
from flm.train.schedule import CosineSchedule
from flm.train.setup import StageData, check_out_dir, check_stage_layout, stage_data, write_run_config
from flm.train.spike import SKIPPED, SpikeGuard, describe, roll_back
from flm.train.state import Counters, Progress, RngState, seed_everything
from flm.train.validation import VAL_ROWS, Validation, _rank_rows

__all__ = ["VAL_ROWS", "StageInit", "StageResult", "Trainer", "_rank_rows", "train_stage"]
log = get_logger(__name__)


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


class Trainer:
    """One stage's training. Parts: ``model`` (a ``ParallelModel``) + ``optimizer``, ``schedule``,
    ``loader``, ``ramp``, ``spike``, ``rng``, ``progress`` (``counters``), ``metrics``; ``checkpoints`` saves
    and restores them. Build it, ``restore`` a checkpoint or start from ``init`` (a grown model), then ``fit``."""

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
        data: StageData | None = None,
    ) -> None:
        tc, oc = cfg.train, cfg.optim
        self.cfg, self.env, self.stage, self.eval_at_start = cfg, env, stage, eval_at_start
        # the data (rank 0 prepares it, the others wait; `flm run`'s preflight did it for every stage) and how
        # a step's batch splits into micro-batches
        data = data or stage_data(cfg, env, init)
        self.prepared, self.micro, self.accum = data.prepared, data.micro, data.accum
        self.validation = Validation(self.prepared, cfg, env, eval_at_start)  # refuses unreadable data when asked
        # the peak is measured (when neither set nor cached) before seeding: it draws numbers
        peak = Peak(tc.peak_flops, "train.peak_flops") if tc.peak_flops else machine_peak(env.device)
        self.mfu = MfuWatch(peak.flops * env.world_size, peak.source, enabled=env.is_main)
        seed_everything(tc.seed)  # dropout; the weights come from per-tensor seeds (or ``init``)
        self.model, self.optimizer = _build_model(cfg, env, init)
        self.schedule = schedule or CosineSchedule(oc.lr, oc.min_lr, oc.warmup_steps, oc.decay_steps or tc.steps)
        self.loader = TokenLoader(self.prepared, "train", seq_len=cfg.seq_len, batch_size=self.micro,
                                  rank=env.dp_rank, world_size=env.dp_size, seed=tc.seed,
                                  document_ids=cfg.data.document_mask)
        self.ramp, self.spike, self.rng, self.counters = MaskRamp(0), SpikeGuard(tc.spike), RngState(), Counters()
        self.progress = Progress(stage, self.counters)
        self.metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=env.is_main, tensorboard_dir=out_dir / "tb")
        parts = {"optimizer": self.optimizer, "schedule": self.schedule, "trainer": self.progress,
                 "ramp": self.ramp, "loader": self.loader, "spike": self.spike, "rng": self.rng,
                 "metrics": self.metrics}
        self.checkpoints = CheckpointManager(ckpt_dir or out_dir, cfg, env, ModelState(self.model), parts,
                                             self.prepared.tokenizer)
        self.flops_per_token = flops_per_token(cfg.model, cfg.seq_len)
        self.tokens_per_step = tc.batch_size * cfg.seq_len
        self.val_loss: float | None = None
        self.tokens_before = init.tokens if init else 0  # `--init`, a growth: tokens the stage starts with
        if init is not None:
            self._continue_from(init)

    @property
    def last_loss(self) -> float:
        return self.progress.train_loss

    @last_loss.setter
    def last_loss(self, value: float) -> None:
        self.progress.train_loss = value

    @property
    def last_ckpt(self) -> Path | None:
        return self.checkpoints.last

    # ----- state ------------------------------------------------------------------------------------------
    def _continue_from(self, init: StageInit) -> None:
        """Moments, counters, data position and mask ramp of a grown (or ``--init``) model."""
        self.ramp.load_state_dict(init.ramp)
        self.counters.tokens, self.counters.flops = init.tokens, init.flops
        self.checkpoints.model.load_optim_state(self.optimizer, init.optim_tensors, init.optim_step,
                                                init.optim_param_steps)
        if init.loader_state and self.loader.continues(init.loader_state):
            self.loader.load_state_dict(init.loader_state)  # the next stage reads on where the last one stopped
        elif init.loader_state and self.loader.carry_over(init.loader_state):
            pass  # a stage with its own mixture: the sources it shares with the last stage read on
        elif init.loader_state:  # e.g. `flm train --init` on other data: a fresh stream, not an error
            log.warning("note: the initial checkpoint was trained on other data (or another train.seed or seq_len); "
                        "this stage reads its data from the start")
        self.ramp.apply(self.model)

    def restore(self, folder: Path) -> None:
        """Every part's state from a checkpoint of this stage (``--resume``, a spike's rollback)."""
        self.checkpoints.restore(folder)
        if self.counters.step >= self.cfg.train.steps:  # a finished stage: report what it ended with
            records = read_metrics(self.metrics.path)
            self.val_loss = next((r["val_loss"] for r in reversed(records) if "val_loss" in r), None)

    def save(self) -> Path:
        """A checkpoint of every part at the current step (``CheckpointManager.save``)."""
        return self.checkpoints.save(self.counters.step)

    # ----- one step -----------------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float, float] | None:
        """One optimizer step over ``accum`` micro-batches; returns (loss, lr, grad norm), or None when the
        spike guard skipped it. The loss of a micro-batch is its masked token sum over the global number of
        loss tokens, so the gradients are those of the mean over the whole global batch (FSDP2 averages over
        the dp replicas: hence the / dp)."""
        env, step = self.env, self.counters.step
        # the LR of this step, scaled per μP group (lr_scale: hidden matrices take lr / width multiplier)
        lr = self.schedule(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        # the loss tokens of the whole global batch: every micro-batch's loss is divided by their number
        batches = [next(self._it) for _ in range(self.accum)]
        count = torch.tensor(float(sum(float(b[2].sum()) for b in batches)), device=env.device)  # b[2]: loss mask
        denom = env.sum_over_dp(count).clamp_min(1.0) / env.dp_size
        loss_sum = self.model.forward_backward(batches, denom)
        grad_norm = self.model.clip_grad_norm_(self.cfg.optim.clip)
        loss = float(env.sum_over_dp(loss_sum)) / env.dp_size  # the same on every rank: they all judge alike
        # the spike guard may refuse the step: the gradients are dropped before the optimizer sees them
        reason = self.spike.judge(loss, float(grad_norm))
        if reason is not None:
            self.optimizer.zero_grad(set_to_none=True)
            _skip(self, reason, loss, float(grad_norm))
            return None
        if self.ramp.active and self.ramp.done_steps == 0:  # m = 0: new blocks' first AdamW step waits
            self.model.drop_silent_grads(self.optimizer)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ramp.step(self.model)  # a growth's masks move one step towards 1
        self.counters.advance(self.tokens_per_step, self.flops_per_token)
        if not math.isfinite(loss):
            raise FlmError(
                f"loss became {loss} at step {self.counters.step}; lower optim.lr or raise optim.warmup_steps"
            )
        return loss, lr, float(grad_norm)

    def evaluate(self) -> float:
        self.val_loss = self.validation(self.model)
        return self.val_loss

    # ----- logging ----------------------------------------------------------------------------------------
    def _log_step(self, lr: float, grad_norm: float, window: Throughput, final: bool) -> None:
        """metrics.jsonl's line of the step just taken, with a validation loss when one is due. During a growth
        ramp every step is logged (its loss bump, flm.growth.bump)."""
        step = self.counters.step
        validate = self.validation.due(step, final, self.ramp.total)
        in_ramp = step <= self.ramp.total
        if step % self.cfg.train.log_every == 0 or validate or final or in_ramp:
            rec = _step_record(self, lr, grad_norm, window.rate())
            if validate:
                rec["val_loss"] = self.evaluate()
            self.metrics.write(rec)

    # ----- the loop ---------------------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> StageResult:
        """Train to ``train.steps`` (or ``stop_after``), logging, validating and checkpointing on the way.
        SIGTERM / SIGUSR1 end it after the current step, with a checkpoint, by raising ``Preempted`` (exit 0)."""
        tc, c = self.cfg.train, self.counters
        # Start: a fresh pass over the data stream, this process's clock, and right after a growth the
        # validation loss before the first step (it must equal the loss before the growth)
        self.model.train()
        self._it = iter(self.loader)
        self.progress.started = time.perf_counter()
        if self.eval_at_start and c.step == 0:
            _log_start(self)
        window, tokens0 = Throughput(), c.tokens
        end = tc.steps if stop_after is None else min(tc.steps, stop_after)
        shown = tc.progress and self.env.is_main
        bar_cm = progress_bar("step", tc.steps, completed=c.step, enabled=shown, transient=False, console=Console())
        stopped = None
        interrupted = say_where_on_interrupt(self.env, self.checkpoints, lambda: c.step)
        with bar_cm as bar, interrupted, StopRequest(self.env) as stop:
            while c.step < end:
                # One optimizer step; None: the spike guard refused it, on to the next batch
                done = self.train_step()
                if done is None:
                    continue
                self.last_loss, lr, grad_norm = done
                window.add(self.tokens_per_step)
                final = c.step == tc.steps
                # Log the step (validating when due) and move the progress display
                self._log_step(lr, grad_norm, window, final)
                rate = (c.tokens - tokens0) / max(time.perf_counter() - self.progress.started, 1e-9)
                bar.update(completed=c.step, description=_desc(self.stage, self.last_loss, self.val_loss),
                           info=f"{rate:,.0f} tok/s")
                # Checkpoint when due; a stop request (SIGTERM / SIGUSR1 on any rank) ends with one at this step
                saved = self.checkpoints.due(c.step, final)
                if saved:
                    self.save()
                if stop.agreed():  # SIGTERM / SIGUSR1 / Ctrl-C on any rank: a checkpoint at this step, then exit
                    if not saved:
                        self.save()
                    stopped = stop.name, stop.exit_code
                    break
        # End: complete the last save (a background one too), stop its writer, close the logs
        self.checkpoints.close()
        self.metrics.close()
        if stopped is not None:  # SIGTERM / SIGUSR1 / Ctrl-C: say where, then end the process with its exit code
            stop_at_checkpoint(*stopped, c.step, self.last_ckpt)
        here = time.perf_counter() - self.progress.started
        return StageResult(steps=c.step, tokens=c.tokens, flops=c.flops, seconds=c.seconds + here,
                           train_loss=self.last_loss, val_loss=self.val_loss, checkpoint=self.last_ckpt,
                           seconds_here=here, tokens_before=self.tokens_before)


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
    data: StageData | None = None,
) -> StageResult:
    """Train ``cfg.model`` for ``cfg.train.steps`` optimizer steps into ``out_dir`` (checkpoints in
    ``ckpt_dir``, default out_dir), from scratch, from ``init``, or (``resume``) from the newest checkpoint.
    ``data``: the stage's data from `flm run`'s preflight, which has checked the stage's layout already."""
    out_dir = Path(out_dir)
    env = env or init_distributed(cfg.train, cfg.parallel)
    if data is None:
        check_stage_layout(cfg, env)  # before anything is written
    if save_config_file:
        check_out_dir(out_dir, cfg, resume)  # read-only: every rank checks
    trainer = Trainer(cfg, out_dir, env=env, stage=stage, schedule=schedule, ckpt_dir=ckpt_dir,
                      eval_at_start=eval_at_start, init=init, data=data)
    if init is not None and stage > 1:  # a growth of `flm run`: say so in a log too
        log.info(f"stage {stage}: grown to {_shape(cfg)}, continuing at {init.tokens:,} tokens")
    latest = trainer.checkpoints.latest() if resume else None
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


def _step_record(t: Trainer, lr: float, grad_norm: float, tokens_per_s: float) -> dict[str, Any]:
    """metrics.jsonl's line of the step just taken."""
    c, m = t.counters, t.cfg.model
    rec = {
        "stage": t.stage, "step": c.step, "tokens": c.tokens, "flops": c.flops, "loss": t.last_loss,
        "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s,
        "mfu": t.mfu(tokens_per_s * t.flops_per_token),
        "d_model": m.d_model, "n_layers": m.n_layers, "time": t.progress.seconds(),
    }
    if t.ramp.total:
        rec["mask_m"] = t.ramp.value
    return rec


def _log_start(t: Trainer) -> None:
    """The validation loss before the first step (right after a growth: it must equal the loss before)."""
    c, m = t.counters, t.cfg.model
    t.metrics.write({"stage": t.stage, "step": 0, "tokens": c.tokens, "flops": c.flops,
                     "val_loss": t.evaluate(), "d_model": m.d_model, "n_layers": m.n_layers, "time": 0.0})


def _build_model(cfg: RunConfig, env: DistEnv, init: StageInit | None) -> tuple[ParallelModel, torch.optim.AdamW]:
    """This rank's part of the model (from ``init``'s state, or fresh) and fused AdamW over its μP groups."""
    tc, oc = cfg.train, cfg.optim
    model = ParallelModel(cfg.model, env, tc, seed=tc.seed, bf16=use_bf16(tc, env.device),
                          state=init.model_state if init else None, growth=init.growth_state if init else None)
    groups = model.param_groups(oc.lr, oc.weight_decay)
    # fused: one kernel per step over all tensors (~5x less optimizer time on CPU than foreach; DTensor-aware)
    optimizer = torch.optim.AdamW(groups, lr=oc.lr, betas=oc.betas, eps=oc.eps, weight_decay=oc.weight_decay,
                                  fused=True)
    return model, optimizer


def _skip(t: Trainer, reason: str, loss: float, grad_norm: float) -> None:
    """Log a refused step (metrics.jsonl, report.md), with where the data stream stood; ``action =
    "rollback"`` first goes back to the last good checkpoint, past the bad batch (flm.train.spike.roll_back)."""
    c, at = t.counters, t.counters.step + 1
    record = {"stage": t.stage, "step": c.step, "spike_step": at, "event": SKIPPED, "reason": reason,
              "spike_loss": loss, "spike_grad_norm": grad_norm, "tokens": c.tokens, "flops": c.flops,
              "data": t.loader.state_dict()}
    if t.spike.rolls_back:
        t.checkpoints.finish()  # a checkpoint still being written is the last good one
        record |= roll_back(t.spike, t.loader, c, t.metrics, t.restore, t.last_ckpt)
    t.metrics.write(record)
    log.warning(describe(record))
    t.spike.count(at, reason)
