"""`flm generate CKPT --prompt TEXT`: sample a continuation from a checkpoint."""

from __future__ import annotations

import argparse

from flm.cli_args import add_command
from flm.errors import FlmError


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "generate", _run)
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument(
        "--max-new-tokens", type=int, default=100,
        help="tokens to add (default 100; capped at the model's max_seq_len minus the prompt)",
    )
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument(
        "--top-k", type=int, default=50, help="sample among the k most likely tokens (0 = all; default 50)"
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix each step (slow)")


def _run(args: argparse.Namespace) -> int:
    """sample text from a checkpoint

    Sample a continuation of --prompt from a checkpoint (a run folder or a checkpoints/step_* folder),
    with temperature and top-k, using the KV cache.
    """
    from flm.checkpoint import load_model
    from flm.generate.sample import generate
    if args.max_new_tokens < 0 or args.temperature < 0 or args.top_k < 0:
        raise FlmError("--max-new-tokens, --temperature and --top-k must be >= 0")
    model, _, tok = load_model(args.checkpoint)
    ids = generate(
        model, tok.encode(args.prompt), args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k or None, vocab_size=tok.vocab_size, stop_ids=(tok.eos_id,),
        use_cache=not args.no_cache, seed=args.seed,
    )
    print(tok.decode(ids))
    return 0
