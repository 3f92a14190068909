"""`flm train`: one training stage from a config."""

from __future__ import annotations

import argparse
from pathlib import Path

from flm.config import check_stage_overrides, load_config
from flm.errors import FlmError


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config", help="run config (TOML) without [[stages]], e.g. configs/demo.toml --set 'stages=[]'"
    )
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
    p.add_argument(
        "--init", type=Path, metavar="CKPT",
        help="start from a checkpoint's weights, Adam moments and growth masks (e.g. the output of flm grow); "
        "the config's [model] must match its shape",
    )
    p.set_defaults(func=_train)
    register_run(sub)


def stage_init_from(path: Path, cfg):
    """A StageInit from a checkpoint (weights, moments, masks and ramp; the step count restarts)."""
    from flm import checkpoint as ck
    from flm.train.loop import StageInit

    folder = ck.resolve_checkpoint(path)
    data, ckpt_cfg = ck.load_checkpoint(folder)
    if ckpt_cfg.model != cfg.model:
        raise FlmError(
            f"--init {folder}: its model {ckpt_cfg.model.shape()} differs from the config's {cfg.model.shape()}; "
            "set [model] to the checkpoint's shape (its config.toml has it)"
        )
    tr = data.trainer
    return StageInit(
        model_state=data.model, optim_tensors=data.optim_tensors, optim_step=int(data.optim_meta.get("step", 0)),
        growth_state=data.growth, ramp=tr.get("ramp"), tokens=int(tr.get("tokens", 0)),
        flops=float(tr.get("flops", 0.0)), loader_state=tr.get("loader"),
    )


def _train(args: argparse.Namespace) -> int:
    from flm.parallel import init_distributed, shutdown
    from flm.train.loop import train_stage

    cfg = load_config(args.config, args.overrides)
    if cfg.stages:
        raise FlmError(
            f"{args.config} lists [[stages]]: `flm train` trains one stage; run the plan with `flm run "
            f"{args.config}`, or train its first shape alone with --set 'stages=[]'"
        )
    out = args.out or Path("runs") / cfg.name
    if args.resume and args.init:
        raise FlmError("--resume continues the run in --out, --init starts a new one from a checkpoint: pass one")
    init = stage_init_from(args.init, cfg) if args.init else None
    env = init_distributed(cfg.train, cfg.parallel)
    try:
        res = train_stage(cfg, out, resume=args.resume, env=env, init=init)
    finally:
        shutdown(env)
    if env.is_main:
        val = f", val loss {res.val_loss:.4f}" if res.val_loss is not None else ""
        print(f"at step {res.steps} ({res.tokens:,} tokens in all) after {res.seconds:.1f}s: loss "
              f"{res.train_loss:.4f}{val}; checkpoint {res.checkpoint}")
    return 0


def register_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="progressive training: train, grow, train, ... (the FLM-101B recipe)",
        description="Run every stage of the config's [[stages]] plan: prepare the data if needed, train "
        "stage 1, grow it with the MSG operators (function-preserving), train stage 2, and so on. Writes "
        "config.toml, metrics.jsonl, stageN/checkpoints, report.md and loss.png into the run folder. A plan "
        "whose growth does not lead from one stage's shape to the next is rejected before training.",
    )
    add_config_args(p)
    p.add_argument("--out", type=Path, help="run folder (default: runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint, in any stage")
    p.add_argument(
        "--scratch", choices=["tokens", "flops"],
        help="instead of the plan, train its final shape from scratch for the same tokens or FLOPs "
        "(the baseline; default folder runs/<name>-scratch-<tokens|flops>)",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "plot",
        help="plot loss curves of one or more runs",
        description="Training and validation loss against tokens and against FLOPs, growth points marked "
        "(dashed), several runs overlaid. Writes a PNG.",
    )
    p.add_argument("runs", nargs="+", type=Path, help="run folders (with metrics.jsonl)")
    p.add_argument("--out", type=Path, help="PNG path (default: <first run>/loss.png)")
    p.set_defaults(func=_plot)


def _run(args: argparse.Namespace) -> int:
    from flm.parallel import init_distributed, shutdown
    from flm.train.loop import train_stage
    from flm.train.run import run_plan, scratch_config

    cfg = load_config(args.config, args.overrides)
    check_stage_overrides(cfg, args.overrides)
    env = None
    if args.scratch:
        cfg = scratch_config(cfg, args.scratch)
        out = args.out or Path("runs") / cfg.name
        env = init_distributed(cfg.train, cfg.parallel)
        try:
            res = train_stage(cfg, out, resume=args.resume, env=env)
        finally:
            shutdown(env)
        if env.is_main:
            val = f", val loss {res.val_loss:.4f}" if res.val_loss is not None else ""
            print(f"scratch baseline: {res.steps} steps, {res.tokens:,} tokens{val} -> {out}")
        return 0
    out = args.out or Path("runs") / cfg.name
    env = init_distributed(cfg.train, cfg.parallel)
    try:
        run_plan(cfg, out, resume=args.resume, env=env)
    finally:
        shutdown(env)
    if env.is_main:
        print(f"done: {out}/report.md, {out}/loss.png")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from flm.train.plot import plot_runs

    out = plot_runs(args.runs, args.out or args.runs[0] / "loss.png")
    print(out)
    return 0
