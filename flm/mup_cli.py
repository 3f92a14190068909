"""`flm mup coord-check`, `flm mup search` and `flm predict`: μP checks, proxy search, loss prediction."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from flm.config import RunConfig, atomic_write, load_config
from flm.errors import FlmError


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _ints(text: str) -> list[int]:
    values = _floats(text)
    if any(v != int(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return [int(v) for v in values]


def _config_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument(
        "config",
        nargs="?" if optional else None,
        help="run config (TOML), e.g. configs/demo.toml; its [model] (first stage) is the model scaled",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=200 (repeatable)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    mup = sub.add_parser(
        "mup",
        help="μP tools: coordinate check and hyperparameter search on a small proxy",
        description="μP (Tensor Programs V) tools. μP is on when model.mup_base_width is set.",
    )
    msub = mup.add_subparsers(dest="mup_command", metavar="SUBCOMMAND")
    mup.set_defaults(func=lambda args: _missing_subcommand(mup))

    cc = msub.add_parser(
        "coord-check",
        help="activation size vs width for the first training steps, μP vs standard parameterization",
        description="Train the config's model at several widths for a few AdamW steps (μP parameter "
        "groups, no weight decay, fp32, CPU) under μP and under standard parameterization (SP), and record "
        "the std of every layer's output at each step. Under μP the curves stay flat across widths; under "
        "SP they grow. Writes coord_check.json and coord_check.png.",
    )
    _config_args(cc)
    cc.add_argument(
        "--widths",
        type=_ints,
        help="comma-separated d_model values, multiples of model.head_dim (default: 4 doublings from the "
        "smallest multiple of head_dim >= 64)",
    )
    cc.add_argument(
        "--steps", type=int, default=3, help="optimizer steps to record after the init (default 3)"
    )
    cc.add_argument("--lr", type=_positive, help="Adam learning rate at the base width (default: optim.lr)")
    cc.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    cc.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (default 64)")
    cc.add_argument(
        "--data",
        choices=("corpus", "random"),
        default="corpus",
        help="batches from the config's prepared training data (default), or uniform random tokens",
    )
    cc.add_argument("--seed", type=int, default=0, help="init and data seed (default 0)")
    cc.add_argument("--out", type=Path, help="output folder (default: runs/<name>/coord-check)")
    cc.set_defaults(func=_coord_check)

    se = msub.add_parser(
        "search",
        help="grid or random search of (lr, init std, output multiplier) on a small μP proxy",
        description="Train the config's model at the proxy width (default: model.mup_base_width) with the "
        "normal trainer for every point of a grid (or of a log-uniform random sample) over learning rate, "
        "init std and output multiplier, rank the points by final validation loss, and write results.json/"
        ".csv, best.toml (a config fragment with the chosen point) and tuned.toml (the whole config with it "
        "applied). Finished points are read, not retrained, so an interrupted search resumes.",
    )
    _config_args(se)
    se.add_argument("--width", type=int, help="proxy d_model (default: model.mup_base_width)")
    se.add_argument("--steps", type=int, help="training steps per point (default: train.steps)")
    se.add_argument("--lr", type=_floats, help="learning rates (default: optim.lr x 1/4, 1/2, 1, 2, 4)")
    se.add_argument("--init-std", type=_floats, help="init stds (default: model.init_std x 1/2, 1, 2)")
    se.add_argument(
        "--output-mult", type=_floats, help="output multipliers (default: model.output_mult x 1/2, 1, 2)"
    )
    se.add_argument(
        "--random",
        type=int,
        metavar="N",
        help="instead of the grid, N points drawn log-uniformly between the smallest and largest value "
        "given for each of --lr, --init-std, --output-mult",
    )
    se.add_argument("--seed", type=int, default=0, help="seed of the random sample (default 0)")
    se.add_argument(
        "--metric",
        choices=("val_loss", "loss"),
        default="val_loss",
        help="rank by final validation loss (default) or final training loss",
    )
    se.add_argument("--out", type=Path, help="output folder (default: runs/<name>/mup-search)")
    se.set_defaults(func=_search)

    pr = sub.add_parser(
        "predict",
        help="μScaling: predict the loss of large μP widths from small ones (L = a N^b + c)",
        description="Train the config's model at a series of μP widths with the same hyperparameters "
        "(or read finished runs), fit L(N) = a (N/1e6)^b + c to the loss of the --widths runs at one "
        "fixed step, predict the --targets runs, and print predicted vs actual with relative error. "
        "Writes prediction.json and prediction.png. Finished width runs in --out are read, not retrained.",
    )
    _config_args(pr, optional=True)
    pr.add_argument("--widths", type=_ints, help="d_model of the runs the law is fitted on (at least 3)")
    pr.add_argument("--targets", type=_ints, default=[], help="d_model of the larger runs to predict")
    pr.add_argument(
        "--extrapolate",
        type=_ints,
        default=[],
        help="d_model of widths to predict without training them (e.g. the model you plan to train)",
    )
    pr.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        help="instead of training: finished run folders (config.toml + metrics.jsonl); runs whose d_model "
        "is in --targets (default: the widest run) are predicted, the others fitted",
    )
    pr.add_argument("--step", type=int, help="the fixed step compared across widths (default: the last)")
    pr.add_argument(
        "--metric",
        choices=("val_loss", "loss"),
        default="val_loss",
        help="validation loss (default) or training loss at that step",
    )
    pr.add_argument(
        "--window",
        type=int,
        default=1,
        help="average the metric over logged steps in (step - window, step] (default 1: that step only)",
    )
    pr.add_argument(
        "--params",
        choices=("non-embedding", "total"),
        default="non-embedding",
        help="parameter count N of the law (default non-embedding)",
    )
    pr.add_argument("--no-train", action="store_true", help="only read runs that have finished; never train")
    pr.add_argument("--out", type=Path, help="output folder (default: runs/<name>/predict)")
    pr.set_defaults(func=_predict)


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _console():
    from rich.console import Console

    return Console()


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# ----- coord-check --------------------------------------------------------------------------------------


def _default_widths(head_dim: int) -> list[int]:
    w0 = head_dim * math.ceil(64 / head_dim)
    return [w0 * 2**k for k in range(4)]


def _coord_batches(cfg: RunConfig, args: argparse.Namespace):
    import torch

    n, b, t = args.steps + 1, args.batch_size, args.seq_len
    if args.data == "random":
        gen = torch.Generator().manual_seed(args.seed)
        data = [torch.randint(0, cfg.model.vocab_size, (b, t + 1), generator=gen) for _ in range(n)]
        batches = [(x[:, :-1], x[:, 1:]) for x in data]
    else:
        from flm.data.loader import TokenLoader
        from flm.data.prepare import prepare_data
        from flm.data.tokenizer import check_vocab

        prepared = prepare_data(cfg.data, progress=cfg.train.progress, model=cfg.model)
        check_vocab(prepared.tokenizer, cfg.model)
        loader = iter(TokenLoader(prepared, "train", seq_len=t, batch_size=b, seed=args.seed))
        batches = [next(loader)[:2] for _ in range(n)]
    return lambda step: batches[step]


def _coord_check(args: argparse.Namespace) -> int:
    from rich.progress import Progress
    from rich.table import Table

    from flm import mup

    cfg = load_config(args.config, args.overrides)
    if not cfg.model.mup_base_width:
        raise FlmError(
            "coord-check compares μP with SP and needs model.mup_base_width "
            "(e.g. --set model.mup_base_width=64)"
        )
    if args.steps < 1 or args.batch_size < 1 or args.seq_len < 2:
        raise FlmError("--steps and --batch-size must be >= 1 and --seq-len >= 2")
    if args.seq_len > cfg.model.max_seq_len:
        raise FlmError(f"--seq-len {args.seq_len} exceeds model.max_seq_len ({cfg.model.max_seq_len})")
    assert cfg.model.head_dim is not None
    widths = sorted(args.widths or _default_widths(cfg.model.head_dim))
    if len(widths) < 2:
        raise FlmError("--widths: give at least two widths to compare")
    lr = args.lr or cfg.optim.lr
    out = args.out or Path("runs") / cfg.name / "coord-check"
    batches = _coord_batches(cfg, args)
    console = _console()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("coord check", total=2 * len(widths))
        records = mup.coord_check(
            cfg.model, widths, batches, steps=args.steps, lr=lr, seed=args.seed,
            progress=lambda: bar.advance(task),
        )  # fmt: skip
    json_path, png_path = save_coord_check(records, out, meta={"lr": lr, "widths": widths, "data": args.data})
    table = Table(title=f"activation std, width {widths[-1]} / width {widths[0]}, after {args.steps} steps")
    table.add_column("layer")
    table.add_column("μP", justify="right")
    table.add_column("SP", justify="right")
    ratios = {p: mup.width_ratios(records, args.steps, p) for p in ("mup", "sp")}
    for layer in ratios["mup"]:
        table.add_row(layer, f"{ratios['mup'][layer]:.2f}x", f"{ratios['sp'][layer]:.2f}x")
    console.print(table)
    # Logits are left out of the verdict: under μP they start near 0 (as 1/sqrt(width): the readout is
    # zero-mean at init) and become width-independent only once training has moved the readout.
    hidden = [r for layer, r in ratios["mup"].items() if layer != "logits"]
    worst = max(max(r, 1 / r) for r in hidden)
    verdict = "flat (within 2x)" if worst < 2 else "NOT flat: check the μP rules"
    console.print(f"μP: largest hidden-activation change across widths {worst:.2f}x -> {verdict}")
    if "logits" in ratios["mup"]:
        console.print(
            f"logits {ratios['mup']['logits']:.2f}x (not judged: μP logits shrink with width at init and "
            "flatten as training proceeds; run more --steps to see them settle)"
        )
    console.print(f"wrote {json_path} and {png_path}")
    return 0


def save_coord_check(records: list[Any], out: Path, meta: dict[str, Any]) -> tuple[Path, Path]:
    """coord_check.json (every record) and coord_check.png (std vs width, one panel per
    parameterization and step, one line per layer)."""
    from dataclasses import asdict

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "coord_check.json", out / "coord_check.png"
    atomic_write(json_path, json.dumps({**meta, "records": [asdict(r) for r in records]}, indent=1))
    pars = [p for p in ("mup", "sp") if any(r.parameterization == p for r in records)]
    steps = sorted({r.step for r in records})
    layers = list(dict.fromkeys(r.layer for r in records))
    fig, axes = plt.subplots(
        len(pars), len(steps), figsize=(3.2 * len(steps), 3.0 * len(pars)), squeeze=False, sharey="row"
    )
    cmap = plt.get_cmap("tab20")
    for i, par in enumerate(pars):
        for j, step in enumerate(steps):
            ax = axes[i][j]
            for k, layer in enumerate(layers):
                key = (par, step, layer)
                pts = sorted(
                    (r.width, r.std) for r in records if (r.parameterization, r.step, r.layer) == key
                )
                ax.plot(*zip(*pts), marker=".", color=cmap(k % 20), label=layer, lw=1)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{'μP' if par == 'mup' else 'SP'}, step {step}", fontsize=9)
            ax.set_xlabel("width (d_model)", fontsize=8)
            if j == 0:
                ax.set_ylabel("activation std", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path


# ----- search ---------------------------------------------------------------------------------------------


def _search(args: argparse.Namespace) -> int:
    from rich.progress import Progress
    from rich.table import Table

    from flm.scaling import search as S

    cfg = load_config(args.config, args.overrides)
    if args.steps is not None and args.steps <= 0:
        raise FlmError(f"--steps {args.steps}: must be positive")
    proxy = S.proxy_config(cfg, args.width, args.steps)
    grid = S.default_grid(cfg)
    values = {
        "lr": args.lr or grid["lr"],
        "init_std": args.init_std or grid["init_std"],
        "output_mult": args.output_mult or grid["output_mult"],
    }
    if args.random:
        points = S.random_points({k: (min(v), max(v)) for k, v in values.items()}, args.random, args.seed)
    else:
        points = S.grid_points(values["lr"], values["init_std"], values["output_mult"])
    out = args.out or Path("runs") / cfg.name / "mup-search"
    console = _console()
    console.print(
        f"μP search: {len(points)} points on a width-{proxy.model.d_model} proxy (depth {proxy.model.n_layers}, "
        f"{proxy.train.steps} steps each) -> {out}"
    )
    best: list[float] = [math.inf]
    with Progress(console=console) as bar:
        task = bar.add_task("search", total=len(points))

        def done(res: S.SearchResult) -> None:
            best[0] = min(best[0], res.loss)
            bar.update(task, advance=1, description=f"search (best {args.metric} {best[0]:.4f})")

        results = S.run_search(proxy, points, out, metric=args.metric, on_done=done)
    paths = S.save_search(results, proxy, cfg, out, args.metric)
    chosen = S.best_result(results)
    table = Table(title=f"μP search, ranked by {args.metric}")
    for col in ("lr", "init_std", "output_mult", "train loss", "val loss", "status"):
        table.add_column(col, justify="right")
    for r in sorted(results, key=lambda r: r.loss):
        p = r.point
        style = "bold green" if r is chosen else None
        table.add_row(
            f"{p.lr:.3g}", f"{p.init_std:.3g}", f"{p.output_mult:.3g}", _fmt(r.train_loss), _fmt(r.val_loss),
            r.status, style=style,
        )  # fmt: skip
    console.print(table)
    console.print(paths["fragment"].read_text(), markup=False, highlight=False)
    console.print(f"wrote {paths['json']}, {paths['csv']}, {paths['fragment']}, {paths['config']}")
    return 0


# ----- predict --------------------------------------------------------------------------------------------


def _predict(args: argparse.Namespace) -> int:
    from rich.progress import Progress
    from rich.table import Table

    from flm.scaling import predict as P

    if args.window < 1:
        raise FlmError(f"--window {args.window}: must be >= 1")
    console = _console()
    if args.runs:
        from flm.checkpoint import read_config

        runs: dict[int, Path] = {}
        for run in args.runs:
            if not (run / "config.toml").is_file():
                raise FlmError(f"--runs {run}: not a run folder (no config.toml)")
            width = read_config(run / "config.toml").model.d_model
            if width in runs:
                raise FlmError(
                    f"--runs: {runs[width]} and {run} both have d_model {width}; give one per width"
                )
            runs[width] = run
        targets = set(args.targets) or {max(runs)}
        missing = targets - set(runs)
        if missing:
            raise FlmError(f"--targets {sorted(missing)}: no run among --runs has that d_model")
        fit_widths = [w for w in runs if w not in targets]
        template = read_config(runs[max(runs)] / "config.toml").model
        out = args.out or Path("runs") / "predict"
    else:
        if not args.config:
            raise FlmError("give a CONFIG to train the width series, or --runs with finished run folders")
        if not args.widths:
            raise FlmError("--widths: give the d_model of the runs to fit, e.g. --widths 32,48,64,96")
        cfg = load_config(args.config, args.overrides)
        overlap = set(args.widths) & set(args.targets)
        if overlap:
            raise FlmError(f"widths {sorted(overlap)} are in both --widths and --targets")
        fit_widths = sorted(args.widths)
        template = cfg.model
        all_widths = fit_widths + sorted(args.targets)
        out = args.out or Path("runs") / cfg.name / "predict"
        if args.no_train:
            runs = {w: out / f"w{w}" for w in all_widths}
        else:
            console.print(
                f"training {len(all_widths)} μP widths {all_widths} ({cfg.train.steps} steps) -> {out}"
            )
            with Progress(console=console) as bar:
                task = bar.add_task("width series", total=len(all_widths))
                runs = P.train_series(
                    cfg, all_widths, out, metric=args.metric, on_done=lambda w: bar.advance(task)
                )
    if len(fit_widths) < 3:
        raise FlmError(f"fitting a·N^b + c needs at least 3 fitted runs, got {len(fit_widths)}")
    pred = P.predict_from_runs(
        runs, fit_widths, step=args.step, metric=args.metric, window=args.window, count=args.params
    )
    extrapolated = P.extrapolate(pred, template, args.extrapolate) if args.extrapolate else []
    json_path, png_path = P.save_prediction(pred, out)
    f = pred.fit
    table = Table(title=f"{args.metric} at step {pred.step}: L = {f.a:.4g}·(N/1e6)^{f.b:.4g} + {f.c:.4g}")
    for col in ("width", f"N ({args.params})", "role", "actual", "predicted", "rel. error"):
        table.add_column(col, justify="right")
    for p in pred.points:
        err = p.rel_error
        table.add_row(
            str(p.width), f"{p.n_params:,}", p.role, f"{p.loss:.4f}", _fmt(p.predicted),
            "-" if err is None else f"{100 * err:+.2f}%", style="bold" if p.role == "predict" else None,
        )  # fmt: skip
    for e in extrapolated:
        table.add_row(str(e["width"]), f"{e['n_params']:,}", "extrapolate", "-", _fmt(e["predicted"]), "-")
    console.print(table)
    for warning in pred.fit.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"wrote {json_path} and {png_path}")
    return 0
