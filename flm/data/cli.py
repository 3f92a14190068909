"""`flm data prepare` (text -> tokenizer + token shards, cached by content hash) and `flm data stats`."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from flm.cli_args import add_command, add_command_group, add_config_args, load_run_config
from flm.data.teacher_cli import register_instruct, register_teacher


def _shown(p: Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)


def _prepare(args: argparse.Namespace) -> int:
    """tokenize the config's data sources into cached token shards

    Train or load the tokenizer named by [data.tokenizer], tokenize the [[data.train]] and [[data.valid]]
    sources (.txt, .md, .jsonl with a "text" field or "prompt"/"completion", each optionally .gz; globs
    allowed) in worker processes, and write uint16/uint32 token shards plus an index to
    data.prepared_dir/<content hash>/. An unchanged config reuses that folder. Paths are relative to the
    current directory.
    """
    from flm.data.prepare import prepare_data
    from flm.data.tokenizer import check_vocab
    cfg = load_run_config(args)
    t0 = time.time()
    prepared = prepare_data(cfg.data, progress=not args.quiet, model=cfg.model)
    check_vocab(prepared.tokenizer, cfg.model)
    how = "reused cached" if prepared.reused else f"built in {time.time() - t0:.1f} s:"
    print(f"{how} {_shown(prepared.dir)}")
    print(f"  tokenizer: {prepared.tokenizer.describe()}, shards {prepared.dtype.name}")
    for split, info in prepared.index["splits"].items():
        if not info["sources"]:
            continue
        docs = sum(s["documents"] for s in info["sources"])
        shards = sum(len(s["shards"]) for s in info["sources"])
        print(f"  {split}: {info['tokens']:,} tokens, {docs:,} documents, {shards} shard(s)")
    return 0


def _stats(args: argparse.Namespace) -> int:
    """show what a prepared data folder holds

    Token, document and character counts per split and source of a prepared data folder (or of every
    prepared folder under DIR).
    """
    from flm.data.prepare import load_prepared, prepared_folders
    for folder in prepared_folders(Path(args.dir)):
        prepared = load_prepared(folder)
        idx = prepared.index
        if args.json:
            print(json.dumps({k: v for k, v in idx.items() if k != "files"}))
            continue
        print(
            f"{_shown(folder)}  ({prepared.tokenizer.describe()}, {idx['dtype']}, "
            f"prepared in {idx['seconds']} s)"
        )
        for split, info in idx["splits"].items():
            for s in info["sources"]:
                chars_per_tok = s["characters"] / max(s["tokens"], 1)
                masked = sum(1 for sh in s["shards"] if sh.get("mask"))
                print(
                    f"  {split:5s} {s['path']}  weight {s['weight']:g}: {s['tokens']:,} tokens, "
                    f"{s['documents']:,} documents, {s['characters']:,} chars "
                    f"({chars_per_tok:.2f} chars/token), "
                    f"{len(s['shards'])} shard(s){f', {masked} with a loss mask' if masked else ''}"
                )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = add_command_group(
        subparsers, "data", help="prepare token shards from text", description="Corpus -> tokenizer + token shards."
    )
    prep = add_command(sub, "prepare", _prepare)
    add_config_args(
        prep,
        "run config (TOML); default: the built-in defaults (data/pd-english)",
        example="data.tokenizer.vocab_size=4096",
        optional=True,
    )
    prep.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    stats = add_command(sub, "stats", _stats)
    stats.add_argument("dir", help="a prepared folder (data/prepared/<hash>) or the folder holding them")
    stats.add_argument("--json", action="store_true", help="print each index as one JSON line")
    register_teacher(sub)
    register_instruct(sub)
