"""`flm checkpoint consolidate CKPT OUT`: a sharded checkpoint as a full one; `flm checkpoint verify CKPT`:
every file against the manifest."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from flm.cli_args import add_command, add_command_group


def cmd_checkpoint_consolidate(args: argparse.Namespace) -> int:
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


def cmd_checkpoint_verify(args: argparse.Namespace) -> int:
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
    c = add_command(ck, "consolidate", cmd_checkpoint_consolidate)
    c.add_argument("ckpt", metavar="CKPT", help="sharded checkpoint folder (checkpoints/step_*)")
    c.add_argument("out", metavar="OUT", help="new checkpoint folder (must not exist)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
    v = add_command(ck, "verify", cmd_checkpoint_verify)
    v.add_argument("ckpt", metavar="CKPT", help="checkpoint folder (checkpoints/step_*) or run folder (its newest)")
