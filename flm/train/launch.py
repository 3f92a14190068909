"""Starting training from the command line: the process group around a job (one process, or one rank of
torchrun), and a stage that starts from a saved checkpoint (``flm train --init``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flm.checkpoint import load_checkpoint, resolve_checkpoint
from flm.checkpoint.stage_init import StageInit
from flm.config import RunConfig
from flm.distributed.env import DistEnv, barrier, init_distributed, shutdown
from flm.errors import FlmError, alike_on_every_rank


@contextmanager
def process_group(cfg: RunConfig) -> Iterator[DistEnv]:
    """This process's place in the job (a process group under torchrun), torn down however the job ends."""
    with alike_on_every_rank():
        env = init_distributed(cfg.train, cfg.parallel)
    try:
        yield env
    except FlmError as e:
        if e.every_rank:  # all ranks raised it: meet before any leaves (rank 0 then speaks for all)
            barrier(env)
        raise
    finally:
        shutdown(env)


def stage_init_from(path: Path, cfg: RunConfig) -> StageInit:
    """A StageInit from a checkpoint (weights, moments, masks and ramp; the step count restarts)."""
    folder = resolve_checkpoint(path)
    data, ckpt_cfg = load_checkpoint(folder)
    if ckpt_cfg.model != cfg.model:
        raise FlmError(
            f"--init {folder}: its model {ckpt_cfg.model.shape()} differs from the config's {cfg.model.shape()}; "
            "set [model] to the checkpoint's shape (its config.toml has it)"
        )
    tr = data.trainer
    return StageInit(
        model_state=data.model, optim_tensors=data.optim_tensors, optim_step=int(data.optim_meta.get("step", 0)),
        optim_param_steps=data.optim_meta.get("param_steps", {}),
        growth_state=data.growth, ramp=tr.get("ramp"), tokens=int(tr.get("tokens", 0)),
        flops=float(tr.get("flops", 0.0)), loader_state=tr.get("loader"),
    )
