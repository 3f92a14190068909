"""`flm plan layout CONFIG`: the argument wiring (the search is flm.scaling.perf.layout, the output
flm.scaling.perf.report)."""

from __future__ import annotations

import argparse
import json

from flm.cli_args import add_command, add_config_args, load_run_config


def _layout(args: argparse.Namespace) -> int:
    """rank TP·PP·DP layouts of each stage by modelled step time, on the GPUs you have

    For every stage (or --stage): enumerate tensor, pipeline and data parallel degrees, micro-batch size,
    pipeline schedule (GPipe, 1F1B, interleaved), sequence parallelism and activation checkpointing; drop what
    flm cannot run and what the memory planner says does not fit 90% of the device; rank the rest by the
    performance model's step time (docs/performance.md) and print the fastest with their breakdown (compute,
    recompute, TP/PP/DP communication, bubble, optimizer), the binding reason, and where the configured
    layout stands. --write saves the config with each stage's best layout. Example:
    flm plan layout configs/flm-101b.toml --gpus 192 --gpu A800 (its [cost] sets ZeRO-1 and the network)
    """
    from flm.hardware import load_catalog
    from flm.progress import progress_bar
    from flm.scaling.perf import layout, report
    from flm.scaling.perf.calibrate import load_calibration
    from flm.scaling.perf.step import CONSTANTS
    cfg = load_run_config(args)
    catalog = load_catalog(args.hardware)
    gpu, net = layout.resolve_hardware(catalog, args.gpu or cfg.cost.gpu, args.network or cfg.cost.network,
                                       "--gpu" if args.gpu else "cost.gpu")
    consts = load_calibration(args.calibrate, gpu.peak_tflops) if args.calibrate else CONSTANTS
    dp_mode = args.dp_mode or cfg.cost.dp_mode
    searches = []
    for st in layout.pick_stages(cfg, args.stage):
        n = layout.stage_gpu_count(cfg, st, args.gpus)

        def run(tick, st=st, n=n):
            return layout.search_stage(cfg, st, n, gpu, net, dp_mode, consts, tick)

        searches.append(layout.timed(run, lambda total, st=st: progress_bar(f"layouts of {st.name}", total)))
    if args.write:
        layout.write_best(cfg, searches, args.write)
    if args.json:
        print(json.dumps({"constants": consts.__dict__, "stages": [s.to_dict(args.top) for s in searches]},
                         indent=2))
    else:
        report.render_text(searches, args.top)
        if args.write:
            print(f"wrote {args.write} (each searched stage's best layout)")
    return 0


def register(psub: argparse._SubParsersAction) -> None:
    p = add_command(psub, "layout", _layout)
    add_config_args(p, "run config (TOML), e.g. configs/flm-101b.toml", example="train.batch_size=1024")
    p.add_argument("--gpus", type=int, help="GPUs (whole nodes); default: each stage's layout's count")
    p.add_argument("--gpu", help="GPU name from flm/hardware.toml (default cost.gpu), e.g. A800, H100")
    p.add_argument("--network", help="inter-node network from flm/hardware.toml (default: the GPU's)")
    p.add_argument("--hardware", metavar="FILE", help="a TOML file adding GPUs or networks (keys as flm/hardware.toml)")
    p.add_argument("--stage", help="only this stage (1-based index or name)")
    p.add_argument("--dp-mode", choices=["fsdp", "zero1", "ddp"],
                   help="data parallelism: fsdp (flm's FSDP2), zero1 (Megatron's distributed optimizer), ddp "
                        "(default: cost.dp_mode, itself fsdp by default)")
    p.add_argument("--top", type=int, default=5, help="layouts shown per stage (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--calibrate", metavar="FILE", help="GEMM efficiency measured by scripts/gpu_check.sh")
    p.add_argument("--write", metavar="OUT.toml", help="save the config with each stage's best layout")
