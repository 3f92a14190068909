"""Starting training from the command line: the process group around a job (one process, or one rank of
torchrun), and a stage that starts from a saved checkpoint (``flm train --init``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flm.checkpoint import load_checkpoint, resolve_checkpoint
from flm.config import ModelConfig, RunConfig, TokenizerConfig
from flm.data.tokenizer import HFTokenizer, Tokenizer, build_tokenizer, load_tokenizer
from flm.distributed.env import DistEnv, barrier, init_distributed, shutdown
from flm.errors import FlmError, alike_on_every_rank
from flm.train.loop import StageInit
from flm.train.setup import tokenizer_mismatch


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


def stage_init_from(path: Path, cfg: RunConfig) -> tuple[RunConfig, StageInit]:
    """A StageInit from a checkpoint (weights, moments, masks and ramp; the step count restarts), and ``cfg``
    with the checkpoint's own tokenizer when the config names none (``data.tokenizer`` unset)."""
    folder = resolve_checkpoint(path)
    data, ckpt_cfg = load_checkpoint(folder)
    if ckpt_cfg.model != cfg.model:
        raise FlmError(
            f"--init {folder}: its model differs from the config's in {model_difference(ckpt_cfg.model, cfg.model)}; "
            "set [model] to the checkpoint's shape (its config.toml has it)"
        )
    own = load_tokenizer(folder)
    cfg = _checkpoint_tokenizer(cfg, folder, own)
    tr = data.trainer
    return cfg, StageInit(
        model_state=data.model, optim_tensors=data.optim_tensors, optim_step=int(data.optim_meta.get("step", 0)),
        optim_param_steps=data.optim_meta.get("param_steps", {}),
        growth_state=data.growth, ramp=tr.get("ramp"), tokens=int(tr.get("tokens", 0)),
        flops=float(tr.get("flops", 0.0)), loader_state=tr.get("loader"), tokenizer=own, source=folder,
    )


def model_difference(theirs: ModelConfig, ours: ModelConfig) -> str:
    """The keys on which two model configs differ, each with both values (their dicts may print alike when
    the difference is outside ``shape()``)."""
    a, b = theirs.model_dump(), ours.model_dump()
    return ", ".join(f"{k} = {a[k]!r} (the config: {b[k]!r})" for k in a if a[k] != b[k])


def _checkpoint_tokenizer(cfg: RunConfig, folder: Path, own: Tokenizer) -> RunConfig:
    """The config whose tokenizer is the checkpoint's: taken from the checkpoint when the config names none; a
    configured one that is not the checkpoint's refused here when that is known without training a BPE (a BPE
    is compared once prepared)."""
    tok_cfg = cfg.data.tokenizer
    if "tokenizer" not in cfg.data.model_fields_set:
        print(f"note: --init {folder}: the config names no data.tokenizer; using the checkpoint's "
              f"({own.describe()})", file=sys.stderr)
        data = cfg.data.model_copy(update={"tokenizer": TokenizerConfig(kind="file", path=str(folder.resolve()))})
        return cfg.model_copy(update={"data": data})
    if tok_cfg.kind != "bpe":
        configured = build_tokenizer(tok_cfg)
        if not own.same_tokens(configured):
            raise tokenizer_mismatch(folder, own, cfg, configured.describe())
    elif (not isinstance(own, HFTokenizer) or own.vocab_size > tok_cfg.vocab_size  # no BPE of that size is it
          or tok_cfg.vocab_size > cfg.model.vocab_size):  # nor one the checkpoint's embedding could not hold
        raise tokenizer_mismatch(folder, own, cfg, f"a BPE of up to {tok_cfg.vocab_size} tokens")
    return cfg
