"""`flm grow CKPT --to SPEC --out DIR [--check]`: offline MSG growth of a saved checkpoint; `flm checkpoint
consolidate CKPT OUT`: a sharded checkpoint as a full one; `flm checkpoint verify CKPT`: every file against
the manifest."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flm.cli_args import add_command, add_command_group

CHECK_TOLERANCE = 1e-4

SPEC_HELP = """\
growth spec: KEY=VALUE pairs separated by commas, or a TOML file whose [grow] table (or top level) holds
the keys. Keys (unset dimensions stay as they are):
  d_model=N          hidden size; when the attention width equals d_model and n_heads is not given, heads
                     follow the width at the current head_dim (d_model must then be a multiple of head_dim)
  d_ff=N             FFN size
  n_heads=N          number of heads; new heads have the current head_dim
  n_layers=N         depth
  depth_position=P   where new blocks go: "top" (default), "interleave" (spread between the old blocks) or a
                     list of their indices in the grown model, e.g. depth_position=[1,3]
  depth_init=I       "copy" (default: a copy of the old block below, or of depth_copy_from) or "random"
  depth_copy_from=K  old layer every new block copies
  ramp_steps=N       optimizer steps over which the masks go 0 -> 1 (default 100; 0 = no ramp: the new
                     weights act at once and the function changes)
  reset_optimizer=B  true: drop the AdamW moments and restart the step count (default false: moments are
                     copied into the old slice, zeros elsewhere, step kept)
example: --to d_model=256,d_ff=1024,n_layers=8,ramp_steps=200"""


def run(args: argparse.Namespace) -> int:
    """grow a saved checkpoint with function-preserving MSG operators

    Grow a checkpoint (width, FFN, heads, depth; any subset at once) into a new checkpoint folder. The
    grown model computes the same function as the old one (growth masks at m = 0, saved in
    growth.safetensors; training ramps them to 1 over ramp_steps). Tensors are streamed one at a time,
    so checkpoints larger than RAM can be grown; a sharded checkpoint is read and (by default) written
    sharded. Exit code 2 on a bad spec or checkpoint.
    """
    from flm.checkpoint.grow import grow_checkpoint, max_logit_delta
    from flm.growth.spec import parse_growth_spec
    from flm.progress import progress_bar
    growth = parse_growth_spec(args.to)
    with progress_bar("growing", enabled=not args.no_progress, unit="bytes") as bar:
        rep = grow_checkpoint(args.ckpt, growth, args.out, seed=args.seed, progress=bar.start, fmt=args.format)
    changed = ", ".join(f"{k} {rep.old[k]} -> {rep.new[k]}" for k in rep.new if rep.new[k] != rep.old[k])
    print(f"grew {changed or 'nothing (same shape)'}")
    print(f"wrote {rep.out} ({rep.bytes_written / 1e9:.3f} GB of tensors in {rep.seconds:.1f} s)")
    if growth.ramp_steps == 0:
        print("note: ramp_steps = 0, so no masks: the new weights act at once and the function changes")
    if args.check:
        delta = max_logit_delta(Path(args.ckpt), rep.out, seed=args.seed)
        ok = delta <= CHECK_TOLERANCE or growth.ramp_steps == 0
        print(f"check: max |delta logit| = {delta:.3g} (old vs grown at m = 0, one batch of random tokens)")
        if not ok:
            print(f"check: FAILED, above {CHECK_TOLERANCE:g}", file=sys.stderr)
            return 1
    return 0


def run_consolidate(args: argparse.Namespace) -> int:
    """write a sharded checkpoint as a full one (model.safetensors, optim.safetensors)

    Read a checkpoint written with train.checkpoint_format = "sharded" (torch.distributed.checkpoint shards
    in model/ and optim/) and write a full checkpoint folder that every flm command and exporter reads,
    streamed tensor by tensor. The sharded checkpoint is verified against its manifest first.
    """
    from flm.checkpoint.consolidate import consolidate
    from flm.progress import progress_bar
    with progress_bar("consolidating", enabled=not args.no_progress, unit="bytes") as bar:
        written = consolidate(Path(args.ckpt), Path(args.out), progress=bar.advance)
    print(f"wrote {args.out} ({written / 1e9:.3f} GB of tensors)")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """check a checkpoint's files against its manifest (sizes and sha256)

    Read every file of a checkpoint (full or sharded) and compare its size and sha256 with manifest.json.
    Prints OK with the file count, or one line naming the damaged file and the checkpoint before it (exit
    2). A run folder means its newest checkpoint. flm train --resume, generate, eval, grow and export run
    the same check when they load a checkpoint.
    """
    from flm.checkpoint.store import resolve_checkpoint, verify_manifest
    t0 = time.perf_counter()
    folder = resolve_checkpoint(args.ckpt)
    files = verify_manifest(folder)
    size = sum(int(m["bytes"]) for m in files.values())
    print(f"OK {folder}: {len(files)} files, {size / 1e6:.1f} MB, sha256 verified in {time.perf_counter() - t0:.2f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ck = add_command_group(sub, "checkpoint", help="checkpoint tools (consolidate, verify)",
                           description="Tools for saved checkpoints.", metavar="TOOL")
    c = add_command(ck, "consolidate", run_consolidate)
    c.add_argument("ckpt", metavar="CKPT", help="sharded checkpoint folder (checkpoints/step_*)")
    c.add_argument("out", metavar="OUT", help="new checkpoint folder (must not exist)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
    v = add_command(ck, "verify", run_verify)
    v.add_argument("ckpt", metavar="CKPT", help="checkpoint folder (checkpoints/step_*) or run folder (its newest)")
    p = add_command(sub, "grow", run, epilog=SPEC_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "ckpt", metavar="CKPT", help="checkpoint folder (checkpoints/step_*) or run folder (its newest)"
    )
    p.add_argument(
        "--to", required=True, metavar="SPEC", help="growth spec: KEY=VALUE,... or a TOML file (below)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="new checkpoint folder (must not exist)")
    p.add_argument(
        "--check",
        action="store_true",
        help=f"run one batch through the old and the grown model, print the largest |delta logit| "
        f"(exit 1 above {CHECK_TOLERANCE:g}); loads both models into memory",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the new weights' random init (default 0)")
    p.add_argument("--format", choices=("full", "sharded"), default=None,
                   help="write safetensors files (full) or torch.distributed.checkpoint shards that the trainer "
                   "loads under any layout (sharded); default: the format of CKPT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
