"""`flm train`: one training stage from a config."""

from __future__ import annotations

import argparse
from pathlib import Path

from flm.config import load_config


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config (TOML), e.g. configs/demo.toml")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=50 (repeatable)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one stage (single process, or torchrun --nproc_per_node N for FSDP2)",
        description="Train the config's [model] for train.steps optimizer steps on its [data]. Writes "
        "config.toml, metrics.jsonl and checkpoints/ into the output folder. Run under torchrun for "
        "data-parallel FSDP2 training (gloo on CPU, NCCL on GPU).",
    )
    add_config_args(p)
    p.add_argument("--out", type=Path, help="output folder (default: runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from flm.parallel import init_distributed, shutdown
    from flm.train.loop import train_stage

    cfg = load_config(args.config, args.overrides)
    out = args.out or Path("runs") / cfg.name
    env = init_distributed(cfg.train, cfg.parallel)
    try:
        res = train_stage(cfg, out, resume=args.resume, env=env)
    finally:
        shutdown(env)
    if env.is_main:
        val = f", val loss {res.val_loss:.4f}" if res.val_loss is not None else ""
        print(f"trained {res.steps} steps, {res.tokens:,} tokens in {res.seconds:.1f}s: loss {res.train_loss:.4f}"
              f"{val}; checkpoint {res.checkpoint}")
    return 0
