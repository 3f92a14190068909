"""The small μP proxy both μP benchmarks train: the bundled corpus, one width series, CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from flm.config import RunConfig, config_from_dict

ROOT = Path(__file__).resolve().parents[1]


def proxy_config(
    args: argparse.Namespace, *, name: str, lr: float, min_lr: float, eval_batches: int, seed: int
) -> RunConfig:
    corpus = ROOT / "data" / "pd-english"
    return config_from_dict(
        {
            "name": name,
            "model": {
                "vocab_size": args.vocab, "d_model": args.base_width, "n_layers": args.layers,
                "n_heads": args.base_width // args.head_dim, "head_dim": args.head_dim,
                "max_seq_len": args.seq_len, "mup_base_width": args.base_width, "init_std": args.init_std,
                "output_mult": args.output_mult,
            },
            "data": {
                "train": [{"path": str(corpus / "train.jsonl.gz")}],
                "valid": [{"path": str(corpus / "valid.jsonl.gz")}],
                "tokenizer": {"kind": "bpe", "vocab_size": args.vocab},
                "prepared_dir": str(ROOT / "data" / "prepared"),
                "max_chars": args.max_chars,
            },
            "optim": {"lr": lr, "min_lr": min_lr, "warmup_steps": max(1, args.steps // 10)},
            "train": {
                "steps": args.steps, "batch_size": args.batch_size, "eval_every": 0,
                "eval_batches": eval_batches, "log_every": 10, "device": "cpu", "progress": False, "seed": seed,
            },
        }
    )  # fmt: skip
