"""The training loop for one stage: AdamW, warmup + cosine, gradient accumulation, masked LM loss,
periodic validation, metrics, atomic checkpoints, exact resume, single process or torchrun + FSDP2.

``train_stage`` is what ``flm train`` runs; ``flm run`` calls it once per stage with the grown model's
state in ``init`` and a schedule shared across stages.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flm import checkpoint as ck
from flm.config import RunConfig, save_config
from flm.errors import FlmError
from flm.growth.ramp import MaskRamp
from flm.model import FLM
from flm.mup import param_groups
from flm.parallel import (
    DistEnv,
    all_reduce_sum,
    apply_compile,
    apply_fsdp,
    barrier,
    init_distributed,
    use_bf16,
)
from flm.train.metrics import MetricsLog, measure_matmul_peak, read_metrics
from flm.train.schedule import CosineSchedule


@dataclass
class StageResult:
    steps: int
    tokens: int
    flops: float
    seconds: float
    train_loss: float
    val_loss: float | None
    checkpoint: Path | None


def _rank_rows(batch: tuple[Tensor, Tensor, Tensor], rank: int, world: int) -> tuple[Tensor, Tensor, Tensor]:
    """This rank's rows of a validation batch. A rank beyond the batch's rows still runs one row (FSDP2
    needs every rank in every forward), with a zero loss mask, so it adds nothing."""
    x, y, mk = batch
    if rank < x.shape[0]:
        return x[rank::world], y[rank::world], mk[rank::world]
    return x[:1], y[:1], torch.zeros_like(mk[:1])


def _rng_state() -> dict[str, Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Tensor]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def full_model_state(model: torch.nn.Module, env: DistEnv) -> dict[str, Tensor]:
    if not env.distributed:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optim_state(model, optimizer, env: DistEnv) -> tuple[dict[str, Tensor], int]:
    """AdamW moments keyed "exp_avg/<param>" and the step count, gathered to full tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    osd = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=env.distributed)
    )
    tensors: dict[str, Tensor] = {}
    step = 0
    for name, st in osd.get("state", {}).items():  # empty on ranks > 0 when gathered to rank 0
        step = int(st["step"])
        tensors[f"exp_avg/{name}"] = st["exp_avg"].detach().cpu().clone()
        tensors[f"exp_avg_sq/{name}"] = st["exp_avg_sq"].detach().cpu().clone()
    return tensors, step


def load_optim_state(model, optimizer, tensors: dict[str, Tensor], step: int, env: DistEnv) -> None:
    if not tensors:
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = {n.split("/", 1)[1] for n in tensors}
    state = {
        n: {
            "step": torch.tensor(float(step)),
            "exp_avg": tensors[f"exp_avg/{n}"],
            "exp_avg_sq": tensors[f"exp_avg_sq/{n}"],
        }
        for n in names
    }
    groups = [
        {k: v for k, v in g.items() if k != "params"} | {"params": list(g["names"])} for g in optimizer.param_groups
    ]
    set_optimizer_state_dict(
        model, optimizer, {"state": state, "param_groups": groups}, options=StateDictOptions(full_state_dict=True)
    )


def load_model_state(model, state: dict[str, Tensor], env: DistEnv) -> None:
    if not env.distributed:
        model.load_state_dict(state, strict=True)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


_PEAKS: dict[str, float] = {}


def device_peak(device: torch.device) -> float:
    """The measured matmul peak, once per process (measured before any seeding: it draws random numbers)."""
    key = str(device)
    if key not in _PEAKS:
        _PEAKS[key] = measure_matmul_peak(device)
    return _PEAKS[key]


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
        import torch.distributed as dist

        box = [err]
        dist.broadcast_object_list(box, src=0)
        err = box[0]
    if err is not None:
        raise FlmError(err)
    if not env.is_main and others is not None:
        result = others()
    return result


VAL_ROWS = 16  # sequences per validation batch, whatever the training batch or world size


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
    old = ck.read_config(existing)
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


@dataclass
class StageInit:
    """Where a stage starts when it does not start from scratch (a grown model, in ``flm run``)."""

    model_state: dict[str, Tensor]
    optim_tensors: dict[str, Tensor] = field(default_factory=dict)
    optim_step: int = 0
    growth_state: dict[str, Tensor] = field(default_factory=dict)
    ramp: dict[str, int] | None = None
    tokens: int = 0
    flops: float = 0.0
    loader_state: dict[str, Any] | None = None


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
    """Train ``cfg.model`` for ``cfg.train.steps`` optimizer steps. See module docstring."""
    out_dir = Path(out_dir)
    env = env or init_distributed(cfg.train, cfg.parallel)
    tc, oc = cfg.train, cfg.optim
    ckpt_dir = ckpt_dir or out_dir
    if save_config_file:
        check_out_dir(out_dir, cfg, resume)  # read-only: every rank checks
    bf16 = use_bf16(tc, env.device)

    from flm.data.loader import TokenLoader
    from flm.data.prepare import prepare_data
    from flm.data.tokenizer import check_vocab

    prepared = rank0_first(
        env, lambda: prepare_data(cfg.data, progress=tc.progress), lambda: prepare_data(cfg.data, progress=False)
    )
    check_vocab(prepared.tokenizer, cfg.model)

    batch, micro, seq = tc.batch_size, tc.micro_batch_size or 0, cfg.seq_len
    if batch % env.world_size:
        raise FlmError(f"train.batch_size ({batch}) must be divisible by the {env.world_size} data-parallel ranks")
    per_rank = batch // env.world_size
    micro = micro or per_rank
    if per_rank % micro:
        raise FlmError(
            f"train.micro_batch_size ({micro}) must divide the per-rank batch ({per_rank}); adjust either"
        )
    accum = per_rank // micro
    validate = bool(tc.eval_every or eval_at_start)
    try:  # a validation set that cannot be read fails now, not at the first evaluation
        TokenLoader(prepared, "valid", seq_len=seq, batch_size=1)
    except FlmError:
        if validate:
            raise
    else:
        validate = True  # with eval_every = 0: one validation loss at the end, when there is data

    peak = tc.peak_flops or device_peak(env.device)
    seed_everything(tc.seed)
    model = FLM(cfg.model)
    if init is not None:
        model.load_state_dict(init.model_state, strict=True)
        if init.growth_state:
            model.load_growth_state(init.growth_state)
    model.to(env.device)
    if tc.compile:
        apply_compile(model)
    apply_fsdp(model, env, bf16=bf16)
    groups = param_groups(model, oc.lr, oc.weight_decay)
    # fused: one kernel per step over all tensors (~5x less optimizer time on CPU than foreach; DTensor-aware)
    optimizer = torch.optim.AdamW(
        groups, lr=oc.lr, betas=oc.betas, eps=oc.eps, weight_decay=oc.weight_decay, fused=True
    )
    schedule = schedule or CosineSchedule(oc.lr, oc.min_lr, oc.warmup_steps, tc.steps)
    loader = TokenLoader(prepared, "train", seq_len=seq, batch_size=micro, rank=env.rank,
                         world_size=env.world_size, seed=tc.seed)
    ramp = MaskRamp.from_state(init.ramp) if init and init.ramp else MaskRamp(0)
    step, tokens, flops_done = 0, init.tokens if init else 0, init.flops if init else 0.0
    seconds_before = 0.0
    if init is not None:
        load_optim_state(model, optimizer, init.optim_tensors, init.optim_step, env)
        if init.loader_state and loader.continues(init.loader_state):
            loader.load_state_dict(init.loader_state)  # the next stage reads on where the last one stopped
        elif init.loader_state and env.is_main:
            print(  # e.g. `flm train --init` on other data: a fresh stream, not an error
                "note: the initial checkpoint was trained on other data (or another train.seed or seq_len); "
                "this stage reads its data from the start",
                file=sys.stderr,
            )
        ramp.apply(model)

    metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=env.is_main, tensorboard_dir=out_dir / "tb")
    latest = ck.latest_checkpoint(ckpt_dir) if resume else None
    if latest is not None:
        data, saved_cfg = ck.load_checkpoint(latest)
        if saved_cfg.model != cfg.model:
            raise FlmError(
                f"--resume: checkpoint {latest} has model {saved_cfg.model.shape()}, the config asks for "
                f"{cfg.model.shape()}; resume with the run's own config"
            )
        ck.check_state_shapes(model, data.model, latest)  # DTensor shapes are the global ones
        if data.growth:
            model.load_growth_state(data.growth)
        else:
            model.end_growth()
        load_model_state(model, data.model, env)
        load_optim_state(model, optimizer, data.optim_tensors, int(data.optim_meta.get("step", 0)), env)
        tr = data.trainer
        step, tokens, flops_done = tr["step"], tr["tokens"], tr["flops"]
        if step > tc.steps:
            raise FlmError(
                f"--resume: {latest} is at step {step}, past train.steps = {tc.steps}; raise train.steps to "
                "train further"
            )
        seconds_before = float(tr.get("seconds", 0.0))
        loader.load_state_dict(tr["loader"])
        ramp = MaskRamp.from_state(tr["ramp"]) if tr.get("ramp") else MaskRamp(0)
        if data.rng:
            _set_rng_state(data.rng)
        metrics.truncate_after(step, stage)
    else:
        metrics.truncate_after(-1, stage)  # a resume before the first checkpoint starts the stage over
    if save_config_file and env.is_main:  # on a resume too: config.toml is what this continuation runs
        write_run_config(out_dir, cfg)

    from flm.scaling.cost import flops_per_token

    flops_tok = flops_per_token(cfg.model, seq)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    )
    valid_cache: list[tuple[Tensor, Tensor, Tensor]] | None = None

    def evaluate() -> float:
        """Mean loss over the first eval_batches x VAL_ROWS validation sequences: the same set in every
        stage and for any number of ranks, so losses before and after a growth compare like for like."""
        nonlocal valid_cache
        if valid_cache is None:  # every rank reads the whole fixed set and keeps rows rank, rank + W, ...
            vl = TokenLoader(prepared, "valid", seq_len=seq, batch_size=VAL_ROWS, seed=0)
            valid_cache = [_rank_rows(b, env.rank, env.world_size) for b in vl.valid_batches(tc.eval_batches)]
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=env.device)
        with torch.no_grad(), autocast():
            for x, y, mk in valid_cache:
                x, y, mk = x.to(env.device), y.to(env.device), mk.to(env.device)
                total[0] += model(x, targets=y, loss_weights=mk).double()
                total[1] += mk.sum().double()
        model.train()
        all_reduce_sum(total, env)
        return float(total[0] / total[1].clamp_min(1))

    def save(at_step: int, train_loss: float) -> Path:
        model_state = full_model_state(model, env)
        optim_tensors, optim_step = full_optim_state(model, optimizer, env)
        folder = Path(ckpt_dir) / ck.CKPT_SUBDIR / ck.step_name(at_step)
        if env.is_main:
            data = ck.CheckpointData(
                model=model_state,
                optim_tensors=optim_tensors,
                optim_meta={"step": optim_step, "lr": schedule(max(at_step - 1, 0))},
                trainer={
                    "stage": stage, "step": at_step, "tokens": tokens, "flops": flops_done,
                    "seconds": seconds_before + time.perf_counter() - t_start,
                    "train_loss": train_loss, "ramp": ramp.state_dict() if ramp.total else None,
                    "loader": loader.state_dict(),  # global position: the same on every rank
                },
                growth=model.growth_state(),
                rng=_rng_state(),
            )
            ck.save_checkpoint(folder, data, cfg, prepared.tokenizer)
            ck.prune_checkpoints(ckpt_dir, tc.keep_last)
        barrier(env)
        return folder

    model.train()
    it = iter(loader)
    t_start = time.perf_counter()
    tokens_per_step = batch * seq
    last_loss, val_loss, last_ckpt = math.nan, None, None
    if step >= tc.steps and latest is not None:  # resumed a finished stage: report what it ended with
        last_loss, last_ckpt = float(data.trainer.get("train_loss", math.nan)), latest
        val_loss = next((r["val_loss"] for r in reversed(read_metrics(metrics.path)) if "val_loss" in r), None)
    window_t, window_tok = time.perf_counter(), 0
    progress = _progress(tc.progress and env.is_main)
    end_step = tc.steps if stop_after is None else min(tc.steps, stop_after)
    if eval_at_start and step == 0:
        val_loss = evaluate()
        metrics.write({"stage": stage, "step": 0, "tokens": tokens, "flops": flops_done, "val_loss": val_loss,
                       "d_model": cfg.model.d_model, "n_layers": cfg.model.n_layers, "time": 0.0})
    with progress as bar, _say_where_on_interrupt(lambda: (step, last_ckpt or latest), env):
        task = bar.add_task("train", total=tc.steps, completed=step) if bar else None
        while step < end_step:
            lr = schedule(step)
            for g in optimizer.param_groups:
                g["lr"] = lr * g["lr_scale"]
            micro_batches = [next(it) for _ in range(accum)]
            count = torch.tensor(float(sum(float(mk.sum()) for _, _, mk in micro_batches)), device=env.device)
            all_reduce_sum(count, env)
            denom = count.clamp_min(1.0) / env.world_size
            loss_sum = torch.zeros((), device=env.device)
            for i, (x, y, mk) in enumerate(micro_batches):
                x, y, mk = x.to(env.device), y.to(env.device), mk.to(env.device)
                if env.distributed and accum > 1:  # reduce-scatter gradients once, after the last micro-batch
                    model.set_requires_gradient_sync(i == accum - 1)
                with autocast():
                    loss = model(x, targets=y, loss_weights=mk / denom)  # fused readout + masked CE
                loss.backward()
                loss_sum += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), oc.clip if oc.clip > 0 else float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ramp.step(model)
            step += 1
            tokens += tokens_per_step
            flops_done += flops_tok * tokens_per_step
            window_tok += tokens_per_step
            all_reduce_sum(loss_sum, env)
            last_loss = float(loss_sum) / env.world_size
            if not math.isfinite(last_loss):
                raise FlmError(
                    f"loss became {last_loss} at step {step}; lower optim.lr or raise optim.warmup_steps"
                )
            do_eval = validate and (bool(tc.eval_every) and step % tc.eval_every == 0 or step == tc.steps)
            rec: dict[str, Any] | None = None
            if step % tc.log_every == 0 or do_eval or step == tc.steps:
                now = time.perf_counter()
                tok_s = window_tok / max(now - window_t, 1e-9)
                window_t, window_tok = now, 0
                rec = {
                    "stage": stage, "step": step, "tokens": tokens, "flops": flops_done, "loss": last_loss,
                    "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tok_s,
                    "mfu": tok_s * flops_tok / (peak * env.world_size), "d_model": cfg.model.d_model,
                    "n_layers": cfg.model.n_layers, "time": seconds_before + now - t_start,
                }
                if ramp.total:
                    rec["mask_m"] = ramp.value
            if do_eval:
                val_loss = evaluate()
                assert rec is not None
                rec["val_loss"] = val_loss
            if rec is not None:
                metrics.write(rec)
            if bar:
                bar.update(task, completed=step, description=_desc(stage, last_loss, val_loss))
            if (tc.ckpt_every and step % tc.ckpt_every == 0) or step == tc.steps:
                last_ckpt = save(step, last_loss)
    metrics.close()
    result = StageResult(
        steps=step, tokens=tokens, flops=flops_done, seconds=time.perf_counter() - t_start,
        train_loss=last_loss, val_loss=val_loss, checkpoint=last_ckpt,
    )
    return result


@contextlib.contextmanager
def _say_where_on_interrupt(where: Callable[[], tuple[int, Path | None]], env: DistEnv):
    """Ctrl-C: say what is kept (no checkpoint is written mid-step: the saved state must be exact)."""
    try:
        yield
    except KeyboardInterrupt:
        if env.is_main:
            step, ckpt = where()
            kept = f"the newest checkpoint is {ckpt}; --resume continues from it" if ckpt else (
                "no checkpoint was written yet (train.ckpt_every sets how often); --resume restarts the stage"
            )
            print(f"interrupted at step {step}: {kept}", file=sys.stderr)
        raise


def _desc(stage: int, loss: float, val: float | None) -> str:
    head = f"stage {stage} " if stage else ""
    return f"{head}loss {loss:.3f}" + (f" val {val:.3f}" if val is not None else "")


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), transient=False,
    )
