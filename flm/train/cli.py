"""`flm train` (one training stage), `flm run` (the progressive plan: train, grow, train, ...) and
`flm plot` (loss curves)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flm.cli_args import add_command, add_config_args, load_run_config
from flm.errors import FlmError, alike_on_every_rank

if TYPE_CHECKING:
    from flm.config import RunConfig
    from flm.distributed.env import DistEnv
    from flm.train.loop import StageResult


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", _train)
    add_config_args(p, "run config (TOML) without [[stages]], e.g. configs/demo.toml --set 'stages=[]'")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    _add_layout_arg(p)
    p.add_argument(
        "--init", type=Path, metavar="CKPT",
        help="start from a checkpoint's weights, Adam moments and growth masks (e.g. the output of flm grow); "
        "the config's [model] must match its shape",
    )

    p = add_command(sub, "run", _run)
    add_config_args(
        p, "run config (TOML) whose [[stages]] give the growth plan, e.g. configs/demo.toml "
        "(a config without [[stages]] is a plan of one stage)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, help="run folder (default: runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint, in any stage")
    _add_layout_arg(p)
    p.add_argument(
        "--scratch", choices=["tokens", "flops"],
        help="instead of the plan, train its final shape from scratch for the same tokens or FLOPs "
        "(the baseline; default folder runs/<name>-scratch-<tokens|flops>)",
    )

    p = add_command(sub, "plot", _plot)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (with metrics.jsonl)")
    p.add_argument("--out", type=Path, help="PNG path (default: <first run>/loss.png)")


def _add_layout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--layout", choices=["config", "single"], default="config",
        help="config: the [parallel] layout (and each stage's own); single: set them aside and train every stage "
        "in this one process (e.g. configs/demo-3d.toml without torchrun)",
    )


def _load_config(args: argparse.Namespace) -> RunConfig:
    """The run config of the command line, its layouts set aside under --layout single. The training-source
    check comes first: the round trip below would mark every default as set."""
    from flm.config import check_training_source, config_from_dict, config_to_dict

    cfg = load_run_config(args)
    check_training_source(cfg, str(args.config))
    if args.layout == "single":
        data = config_to_dict(cfg)
        data.pop("parallel", None)
        for stage in data.get("stages", []):
            stage.pop("parallel", None)
        cfg = config_from_dict(data, where="--layout single")
    return cfg


def _train(args: argparse.Namespace) -> int:
    """train one stage (single process, or torchrun --nproc_per_node N for FSDP2)

    Train the config's [model] for train.steps optimizer steps on its [data]. Writes config.toml,
    metrics.jsonl and checkpoints/ into the output folder. Run under torchrun for data-parallel FSDP2
    training (gloo on CPU, NCCL on GPU).
    """
    from flm.distributed.env import rank_loss_as_error
    from flm.train.launch import process_group, stage_init_from
    from flm.train.loop import train_stage
    from flm.train.setup import check_stage_layout, run_folder_lock

    with alike_on_every_rank():  # every rank reads the same config
        cfg = _load_config(args)
    if cfg.stages:
        raise FlmError(
            f"{args.config} lists [[stages]]: `flm train` trains one stage; run the plan with `flm run "
            f"{args.config}`, or train its first shape alone with --set 'stages=[]'"
        )
    out = args.out or Path("runs") / cfg.name
    if args.resume and args.init:
        raise FlmError("--resume continues the run in --out, --init starts a new one from a checkpoint: pass one")
    init = None
    if args.init:
        cfg, init = stage_init_from(args.init, cfg)
    with process_group(cfg) as env, rank_loss_as_error(env, cfg.parallel.timeout_s, out):
        with alike_on_every_rank():  # a layout the model cannot take: refused before the run folder is touched
            check_stage_layout(cfg, env)
        resume = _resumable(out, args.resume, env)
        with run_folder_lock(out, env):
            res = train_stage(cfg, out, resume=resume, env=env, init=init)
    if env.is_main:
        print(f"at step {res.steps} ({_tokens_and_time(res)}: loss {res.train_loss:.4f}{_val_loss(res)}; "
              f"checkpoint {res.checkpoint}")
    return 0


def _run(args: argparse.Namespace) -> int:
    """progressive training: train, grow, train, ... (the FLM-101B recipe)

    Run every stage of the config's [[stages]] plan: prepare the data if needed, train stage 1, grow it
    with the MSG operators (function-preserving), train stage 2, and so on. Writes config.toml,
    metrics.jsonl, stageN/checkpoints, report.md and loss.png into the run folder. A plan whose growth does
    not lead from one stage's shape to the next is rejected before training.
    """
    from flm.config import check_stage_overrides
    from flm.distributed.env import rank_loss_as_error
    from flm.train.launch import process_group
    from flm.train.loop import train_stage
    from flm.train.run import run_plan, scratch_config
    from flm.train.setup import run_folder_lock

    with alike_on_every_rank():
        cfg = _load_config(args)
        check_stage_overrides(cfg, args.overrides)
        if args.scratch:
            cfg = scratch_config(cfg, args.scratch)
    out = args.out or Path("runs") / cfg.name
    with process_group(cfg) as env, rank_loss_as_error(env, cfg.parallel.timeout_s, out):
        resume = _resumable(out, args.resume, env)
        with run_folder_lock(out, env):
            if args.scratch:
                res = train_stage(cfg, out, resume=resume, env=env)
            else:
                run_plan(cfg, out, resume=resume, env=env)
    if env.is_main and args.scratch:
        print(f"scratch baseline: {res.steps} steps, {res.tokens:,} tokens{_val_loss(res)} -> {out}")
    elif env.is_main:
        print(f"done: {out}/report.md, {out}/loss.png")
    return 0


def _resumable(out: Path, resume: bool, env: DistEnv) -> bool:
    """--resume of a start that was killed before it wrote anything but its lock (e.g. while it prepared the
    data) starts afresh: nothing to continue, nothing to lose, and a job script may always pass --resume.
    Rank 0 looks (before it takes the lock) and tells the others."""
    import torch.distributed as dist

    from flm.train.setup import LOCK_FILE
    box = [resume and env.is_main and out.is_dir() and [p.name for p in out.iterdir()] == [LOCK_FILE]]
    if env.distributed:
        dist.broadcast_object_list(box, src=0)
    if box[0] and env.is_main:
        print(f"note: {out} holds no run yet (an earlier start ended before its first write); starting it",
              file=sys.stderr)
    return resume and not box[0]


def _tokens_and_time(res: StageResult) -> str:
    """Tokens and time, each labelled where it spans more than this process: the tokens count those of the
    --init checkpoint, the time a resumed stage's earlier part."""
    tokens = f"{res.tokens:,} tokens in all"
    if res.tokens_before:
        tokens += f", {res.tokens - res.tokens_before:,} from --init on"
    took = f"{res.seconds:.1f}s"
    if res.seconds - res.seconds_here >= 0.05:
        took = f"{res.seconds:.1f}s of training in all ({res.seconds_here:.1f}s since --resume)"
    return f"{tokens}) after {took}"


def _val_loss(res: StageResult) -> str:
    return f", val loss {res.val_loss:.4f}" if res.val_loss is not None else ""


def _plot(args: argparse.Namespace) -> int:
    """plot loss curves of one or more runs

    Training and validation loss against tokens and against FLOPs, growth points marked (dashed), several
    runs overlaid. Writes a PNG.
    """
    from flm.train.plot import plot_runs
    print(plot_runs(args.runs, args.out or args.runs[0] / "loss.png"))
    return 0
