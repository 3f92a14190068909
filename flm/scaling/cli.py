"""`flm cost` (price a growth plan), `flm mup coord-check` and `flm mup search` (μP checks and the proxy
search) and `flm predict` (μScaling loss prediction). The `flm plan` group is flm/scaling/plan/cli.py."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flm.cli_args import (
    add_command,
    add_command_group,
    add_config_args,
    floats,
    load_run_config,
    positive,
    positive_ints,
)
from flm.errors import FlmError

if TYPE_CHECKING:
    from rich.console import Console

    from flm.config import ModelConfig, RunConfig
    from flm.scaling.search import SearchResult

MUP_CONFIG_HELP = "run config (TOML), e.g. configs/demo.toml; its [model] (first stage) is the model scaled"
METRIC_CHOICES = ("val_loss", "loss")


def register(sub: argparse._SubParsersAction) -> None:
    msub = add_command_group(
        sub,
        "mup",
        help="μP tools: coordinate check and hyperparameter search on a small proxy",
        description="μP (Tensor Programs V) tools. μP is on when model.mup_base_width is set.",
    )
    _register_coord_check(msub)
    _register_search(msub)
    _register_predict(sub)
    _register_cost(sub)


# ----- cost -------------------------------------------------------------------------------------------------


def _register_cost(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "cost", cmd_cost)
    add_config_args(
        p, "run config (TOML), e.g. configs/flm-101b.toml or configs/demo.toml", example="cost.n_gpus=64"
    )
    p.add_argument("--gpu", help="device (cost.gpu): A100, A800, H100, H800, H200, or cpu (peak measured)")
    p.add_argument("--n-gpus", type=int, help="GPUs for stages whose layout leaves dp = -1 (cost.n_gpus)")
    p.add_argument("--peak-tflops", type=float, help="peak TFLOP/s per device (cost.peak_tflops)")
    p.add_argument("--mfu", type=float, help="model FLOPs utilization for stages without tflops_per_gpu")
    p.add_argument("--price", type=float, help="US dollars per GPU-hour (cost.price_per_gpu_hour)")
    p.add_argument("--formula", choices=["narayanan", "6n"], help="FLOPs per token formula (cost.formula)")
    p.add_argument(
        "--recompute", action=argparse.BooleanOptionalAction, default=None,
        help="whether training recomputes all activations; measured TFLOP/s then count the extra forward "
        "(cost.recompute; cost.recompute_layers, per stage, wins when set)",
    )
    p.add_argument(
        "--memory", action="store_true",
        help="instead of the cost: bytes per device of every stage (parameters, gradients, optimizer, "
        "activations, growth peak) for its layout, and whether it fits the device (--gpu, --device-gb)",
    )
    p.add_argument("--device-gb", type=positive, help="with --memory: device memory in GiB (default: --gpu's)")
    p.add_argument("--modelled", action="store_true",
                   help="every stage's throughput from the performance model (docs/performance.md), ignoring "
                        "measured stages[i].tflops_per_gpu")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON (raw numbers, seconds and days)")
    out.add_argument("--markdown", action="store_true", help="print a Markdown table and summary")


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    flags = {
        "gpu": args.gpu, "n_gpus": args.n_gpus, "peak_tflops": args.peak_tflops, "mfu": args.mfu,
        "price_per_gpu_hour": args.price, "formula": args.formula, "recompute": args.recompute,
    }
    return [f"cost.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]


def cmd_cost(args: argparse.Namespace) -> int:
    """FLOPs, time, GPU-hours, dollars, energy and CO2 of a (growth) plan, vs training from scratch

    Price a run config before buying GPUs. For every stage: parameters, tokens, GPUs, throughput, training
    FLOPs (Narayanan et al. 2021, the formula FLM-101B uses), time, GPU-hours, dollars, energy (GPU-hours x
    TDP x PUE) and CO2e; then the totals and the comparison with training the final model from scratch on
    all the tokens at the last stage's throughput. A stage's time is tokens x FLOPs/token / (GPUs x
    stages[i].tflops_per_gpu) when measured, else the performance model's step time (docs/performance.md), or
    tokens x model FLOPs/token / (GPUs x cost.mfu x peak); cost.reported's published figures print beside.
    Example: flm cost configs/flm-101b.toml
    """
    from flm.config import load_config
    from flm.scaling.cost import plan_cost
    from flm.scaling.cost_report import lr_lines, render_markdown, render_text
    from flm.scaling.flops_compare import compare, comparison_lines
    from flm.stages import check_plan, resolve_stages
    from flm.train.schedule import stage_lrs

    cfg = check_plan(load_config(args.config, [*args.overrides, *_flag_overrides(args)]))
    if args.memory:
        return _memory(args, cfg)
    if args.device_gb is not None:
        raise FlmError("--device-gb goes with --memory: flm cost CONFIG --memory --device-gb 80")
    c = plan_cost(cfg, model_only=args.modelled)
    stages = resolve_stages(cfg)
    lrs, flops = stage_lrs(cfg, stages), compare(cfg, stages)
    if args.json:
        out = {**c.to_dict(), "lr": [vars(s) for s in lrs], "flops_comparison": flops.to_dict()}
        print(json.dumps(out, indent=2))
        return 0
    lines = lr_lines(lrs, cfg.lr_mode, cfg.optim.decay_steps) + comparison_lines(flops)
    if args.markdown:
        sys.stdout.write(render_markdown(c) + "".join(f"- {line.strip()}\n" for line in lines))
    else:
        render_text(c)
        print("\n".join(lines))
    return 0


def _memory(args: argparse.Namespace, cfg: RunConfig) -> int:
    """`flm cost --memory`: the memory planner's table (flm.scaling.memory)."""
    from flm.scaling import memory_report
    from flm.scaling.memory import plan_memory

    plan = plan_memory(cfg, args.gpu, args.device_gb)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    elif args.markdown:
        sys.stdout.write(memory_report.render_markdown(plan))
    else:
        memory_report.render_text(plan)
    return 0


# ----- mup coord-check --------------------------------------------------------------------------------------


def _register_coord_check(msub: argparse._SubParsersAction) -> None:
    p = add_command(msub, "coord-check", cmd_mup_coord_check)
    add_config_args(p, MUP_CONFIG_HELP, example="train.steps=200")
    p.add_argument(
        "--widths",
        type=positive_ints,
        help="comma-separated d_model values, multiples of model.head_dim (default: 4 doublings from the "
        "smallest multiple of head_dim >= 64)",
    )
    p.add_argument("--steps", type=int, default=3, help="optimizer steps to record after the init (default 3)")
    p.add_argument("--lr", type=positive, help="Adam learning rate at the base width (default: optim.lr)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (default 64)")
    p.add_argument(
        "--data",
        choices=("corpus", "random"),
        default="corpus",
        help="batches from the config's prepared training data (default), or uniform random tokens",
    )
    p.add_argument("--seed", type=int, default=0, help="init and data seed (default 0)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<name>/coord-check)")


def cmd_mup_coord_check(args: argparse.Namespace) -> int:
    """activation size vs width for the first training steps, μP vs standard parameterization

    Train the config's model at several widths for a few AdamW steps (μP parameter groups, no weight decay,
    fp32, CPU) under μP and under standard parameterization (SP), and record the std of every layer's output
    at each step. Under μP the curves stay flat across widths; under SP they grow. Writes coord_check.json
    and coord_check.png.
    """
    from rich.console import Console
    from rich.table import Table

    from flm.progress import progress_bar
    from flm.scaling import coord_check

    cfg = load_run_config(args)
    shape = {"steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len}
    widths = coord_check.check_setup(cfg, args.widths, **shape)
    lr = args.lr or cfg.optim.lr
    out = args.out or Path("runs") / cfg.name / "coord-check"
    batches = coord_check.coord_batches(cfg, args.data, **shape, seed=args.seed)
    console = Console()
    with progress_bar("coord check", 2 * len(widths), console=console) as bar:
        records = coord_check.coord_check(
            cfg.model, widths, batches, steps=args.steps, lr=lr, seed=args.seed, progress=bar.advance
        )
    meta = {"lr": lr, "widths": widths, "data": args.data}
    json_path, png_path = coord_check.save_coord_check(records, out, meta=meta)
    summary = coord_check.summarize(records, args.steps)
    table = Table(title=f"activation std, width {widths[-1]} / width {widths[0]}, after {args.steps} steps")
    table.add_column("layer")
    table.add_column("μP", justify="right")
    table.add_column("SP", justify="right")
    mup, sp = summary.ratios["mup"], summary.ratios["sp"]
    for layer in mup:
        table.add_row(layer, f"{mup[layer]:.2f}x", f"{sp[layer]:.2f}x")
    console.print(table)
    verdict = "flat (within 2x)" if summary.flat else "NOT flat: check the μP rules"
    console.print(f"μP: largest hidden-activation change across widths {summary.worst_hidden:.2f}x -> {verdict}")
    if "logits" in mup:
        console.print(
            f"logits {mup['logits']:.2f}x (not judged: μP logits shrink with width at init and "
            "flatten as training proceeds; run more --steps to see them settle)"
        )
    console.print(f"wrote {json_path} and {png_path}")
    return 0


# ----- mup search -------------------------------------------------------------------------------------------


def _register_search(msub: argparse._SubParsersAction) -> None:
    p = add_command(msub, "search", cmd_mup_search)
    add_config_args(p, MUP_CONFIG_HELP, example="train.steps=200")
    p.add_argument("--width", type=int, help="proxy d_model (default: model.mup_base_width)")
    p.add_argument("--steps", type=int, help="training steps per point (default: train.steps)")
    p.add_argument("--lr", type=floats, help="learning rates (default: optim.lr x 1/4, 1/2, 1, 2, 4)")
    p.add_argument("--init-std", type=floats, help="init stds (default: model.init_std x 1/2, 1, 2)")
    p.add_argument("--output-mult", type=floats, help="output multipliers (default: model.output_mult x 1/2, 1, 2)")
    p.add_argument(
        "--random",
        type=int,
        metavar="N",
        help="instead of the grid, N points drawn log-uniformly between the smallest and largest value "
        "given for each of --lr, --init-std, --output-mult",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random sample (default 0)")
    p.add_argument(
        "--metric",
        choices=METRIC_CHOICES,
        default="val_loss",
        help="rank by final validation loss (default) or final training loss",
    )
    p.add_argument("--out", type=Path, help="output folder (default: runs/<name>/mup-search)")


def cmd_mup_search(args: argparse.Namespace) -> int:
    """grid or random search of (lr, init std, output multiplier) on a small μP proxy

    Train the config's model at the proxy width (default: model.mup_base_width) with the normal trainer for
    every point of a grid (or of a log-uniform random sample) over learning rate, init std and output
    multiplier, rank the points by final validation loss, and write results.json/.csv, best.toml (a config
    fragment with the chosen point) and tuned.toml (the whole config with it applied). Finished points are
    read, not retrained, so an interrupted search resumes.
    """
    from rich.console import Console
    from rich.table import Table

    from flm.progress import progress_bar
    from flm.scaling import search

    cfg = load_run_config(args)
    if args.steps is not None and args.steps <= 0:
        raise FlmError(f"--steps {args.steps}: must be positive")
    proxy = search.proxy_config(cfg, args.width, args.steps)
    points = search.search_points(
        cfg, lr=args.lr, init_std=args.init_std, output_mult=args.output_mult, n_random=args.random,
        seed=args.seed,
    )  # fmt: skip
    out = args.out or Path("runs") / cfg.name / "mup-search"
    console = Console()
    console.print(
        f"μP search: {len(points)} points on a width-{proxy.model.d_model} proxy (depth {proxy.model.n_layers}, "
        f"{proxy.train.steps} steps each) -> {out}"
    )
    best = [math.inf]
    with progress_bar("search", len(points), transient=False, console=console) as bar:

        def done(res: SearchResult) -> None:
            best[0] = min(best[0], res.loss)
            bar.update(description=f"search (best {args.metric} {best[0]:.4f})")
            bar.advance()

        results = search.run_search(proxy, points, out, metric=args.metric, on_done=done)
    paths = search.save_search(results, proxy, cfg, out, args.metric)
    chosen = search.best_result(results)
    table = Table(title=f"μP search, ranked by {args.metric}")
    for col in ("lr", "init_std", "output_mult", "train loss", "val loss", "status"):
        table.add_column(col, justify="right")
    for r in sorted(results, key=lambda r: r.loss):
        p = r.point
        table.add_row(
            f"{p.lr:.3g}", f"{p.init_std:.3g}", f"{p.output_mult:.3g}", _fmt(r.train_loss), _fmt(r.val_loss),
            r.status, style="bold green" if r is chosen else None,
        )  # fmt: skip
    console.print(table)
    console.print(paths["fragment"].read_text(), markup=False, highlight=False)
    console.print(f"wrote {paths['json']}, {paths['csv']}, {paths['fragment']}, {paths['config']}")
    return 0


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# ----- predict ----------------------------------------------------------------------------------------------


def _register_predict(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "predict", cmd_predict)
    add_config_args(p, MUP_CONFIG_HELP, example="train.steps=200", optional=True)
    p.add_argument("--widths", type=positive_ints, help="d_model of the runs the law is fitted on (at least 3)")
    p.add_argument("--targets", type=positive_ints, default=[], help="d_model of the larger runs to predict")
    p.add_argument(
        "--extrapolate",
        type=positive_ints,
        default=[],
        help="d_model of widths to predict without training them (e.g. the model you plan to train)",
    )
    p.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        help="instead of training: finished run folders (config.toml + metrics.jsonl); runs whose d_model "
        "is in --targets (default: the widest run) are predicted, the others fitted",
    )
    p.add_argument("--step", type=int, help="the fixed step compared across widths (default: the last)")
    p.add_argument(
        "--metric",
        choices=METRIC_CHOICES,
        default="val_loss",
        help="validation loss (default) or training loss at that step",
    )
    p.add_argument(
        "--window",
        type=int,
        default=1,
        help="read the metric from the logged steps in (step - window, step] (default 1: that step only)",
    )
    p.add_argument(
        "--smooth",
        choices=("mean", "trend"),
        default="mean",
        help="over the window: their mean (default), or the least-squares line of the metric against log(step) "
        "read at the step (keeps the end of a falling curve; needs train.eval_every to log 3+ steps in it)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train each fitted width at this many seeds (train.seed, +1, ...) and fit on their mean loss "
        "(default 1; one seed per width errs by up to 1.4%% at 4x the width, four by at most 0.8%%: "
        "benchmarks/loss_prediction_seeds.py)",
    )
    p.add_argument(
        "--params",
        choices=("non-embedding", "total"),
        default="non-embedding",
        help="parameter count N of the law (default non-embedding)",
    )
    p.add_argument("--no-train", action="store_true", help="only read runs that have finished; never train")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<name>/predict)")


def _width_series(args: argparse.Namespace, console: Console
                  ) -> tuple[dict[int, Path | list[Path]], list[int], Path, ModelConfig]:
    """(run folder per width, the widths to fit, the output folder, the model template) of `flm predict`:
    the --runs given, or the config's series, trained unless --no-train."""
    from flm.progress import progress_bar
    from flm.scaling import predict

    if args.runs:
        if args.seeds > 1:
            raise FlmError("--seeds trains each fitted width at several seeds; with --runs give one folder per "
                           "width (or drop --runs and give CONFIG --out FOLDER to read a trained series)")
        runs, fit_widths, template = predict.runs_by_width(args.runs, args.targets)
        return runs, fit_widths, args.out or Path("runs") / "predict", template
    if not args.config:
        raise FlmError("give a CONFIG to train the width series, or --runs with finished run folders")
    if not args.widths:
        raise FlmError("--widths: give the d_model of the runs to fit, e.g. --widths 32,48,64,96")
    cfg = load_run_config(args)
    fit_widths, all_widths = predict.split_series(args.widths, args.targets)
    if len(fit_widths) < 3:  # refused before training the series, not after
        raise FlmError(f"--widths: fitting a·N^b + c needs at least 3 widths, got {len(fit_widths)}; "
                       "give e.g. --widths 32,48,64")
    out = args.out or Path("runs") / cfg.name / "predict"
    targets = [w for w in all_widths if w not in fit_widths]
    if args.no_train:
        runs: dict[int, Path | list[Path]] = {w: [predict.seed_dir(out, cfg, i) / f"w{w}" for i in range(args.seeds)]
                                for w in fit_widths}
        return runs | predict.series_dirs(out, targets), fit_widths, out, cfg.model
    seeds = f" ({args.seeds} seeds each for the fitted ones)" if args.seeds > 1 else ""
    console.print(f"training {len(all_widths)} μP widths {all_widths}{seeds} ({cfg.train.steps} steps) -> {out}")
    total = args.seeds * len(fit_widths) + len(targets)
    with progress_bar("width series", total, transient=False, console=console) as bar:
        runs = predict.train_seeds(cfg, fit_widths, out, args.seeds, metric=args.metric,
                                   on_done=lambda w: bar.advance())
        runs |= predict.train_series(cfg, targets, out, metric=args.metric, on_done=lambda w: bar.advance())
    return runs, fit_widths, out, cfg.model


def cmd_predict(args: argparse.Namespace) -> int:
    """μScaling: predict the loss of large μP widths from small ones (L = a N^b + c)

    Train the config's model at a series of μP widths with the same hyperparameters (or read finished
    runs), fit L(N) = a (N/1e6)^b + c to the loss of the --widths runs at one fixed step, predict the
    --targets runs, and print predicted vs actual with relative error. Writes prediction.json and
    prediction.png. Finished width runs in --out are read, not retrained.
    """
    from rich.console import Console
    from rich.table import Table

    from flm.scaling import predict

    if args.window < 1:
        raise FlmError(f"--window {args.window}: must be >= 1")
    if args.seeds < 1:
        raise FlmError(f"--seeds {args.seeds}: train each fitted width at 1 or more seeds")
    console = Console()
    runs, fit_widths, out, template = _width_series(args, console)
    if len(fit_widths) < 3:
        raise FlmError(f"fitting a·N^b + c needs at least 3 fitted runs, got {len(fit_widths)}")
    pred = predict.predict_from_runs(
        runs, fit_widths, step=args.step, metric=args.metric, window=args.window, count=args.params,
        smooth=args.smooth,
    )
    extrapolated = predict.extrapolate(pred, template, args.extrapolate) if args.extrapolate else []
    json_path, png_path = predict.save_prediction(pred, out)
    f = pred.fit
    table = Table(title=f"{args.metric} at step {pred.step}: L = {f.a:.4g}·(N/1e6)^{f.b:.4g} + {f.c:.4g}")
    for col in ("width", f"N ({args.params})", "role", "actual", "predicted", "rel. error"):
        table.add_column(col, justify="right")
    for p in pred.points:
        err = p.rel_error
        table.add_row(
            f"{p.width}" + (f" (x{p.runs} seeds)" if p.runs > 1 else ""), f"{p.n_params:,}", p.role,
            f"{p.loss:.4f}", _fmt(p.predicted),
            "-" if err is None else f"{100 * err:+.2f}%", style="bold" if p.role == "predict" else None,
        )  # fmt: skip
    for e in extrapolated:
        table.add_row(str(e["width"]), f"{e['n_params']:,}", "extrapolate", "-", _fmt(e["predicted"]), "-")
    console.print(table)
    for warning in pred.fit.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"wrote {json_path} and {png_path}")
    return 0
