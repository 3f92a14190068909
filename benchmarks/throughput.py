"""Training throughput of flm vs Hugging Face GPTNeoXForCausalLM of the same shape, fp32 on the CPU.

One training step = forward + cross-entropy on all tokens + backward + AdamW step, on the same batch for both
models. Both run in the same process, interleaved (the order alternates every repeat to cancel drift), with
the same optimizer settings and thread count; warm-up steps are excluded and medians are reported.

MFU is model FLOPs per second over a fp32 matmul peak measured in the same run (best of several large
square matmuls on the same threads), so it says how much of the machine the training step wastes.

    .venv/bin/python benchmarks/throughput.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/throughput.py --quick    # a short, noisier run

Prints one JSON line and writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.progress import Progress  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from flm.config import ModelConfig  # noqa: E402
from flm.model import FLM  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "throughput.json"


@dataclass(frozen=True)
class Shape:
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    seq: int
    vocab: int
    batch: int

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 N (non-embedding matmul weights) + 6 d V (readout) + attention
        scores and values (12 L seq d, the usual non-causal count)."""
        d, f = self.d_model, self.d_ff
        n_block = 4 * d * d + 2 * d * f
        return 6 * self.n_layers * n_block + 6 * d * self.vocab + 12 * self.n_layers * self.seq * d


SHAPES = {
    # compute-bound: matmuls dominate, the question is whether anything is wasted around them
    "large": Shape(d_model=512, n_layers=8, n_heads=8, d_ff=2048, seq=512, vocab=8192, batch=4),
    # overhead-bound, like the demo config: small matmuls, many small ops
    "small": Shape(d_model=128, n_layers=4, n_heads=4, d_ff=512, seq=256, vocab=8192, batch=16),
}


def matmul_peak_gflops(n: int = 2048, reps: int = 8) -> float:
    """Best fp32 matmul rate on the current threads, GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(2):
        torch.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def build_flm(s: Shape, xpos: bool) -> nn.Module:
    cfg = ModelConfig(
        vocab_size=s.vocab,
        d_model=s.d_model,
        n_layers=s.n_layers,
        n_heads=s.n_heads,
        d_ff=s.d_ff,
        max_seq_len=s.seq,
        xpos=xpos,
    )
    return FLM(cfg)


def build_hf(s: Shape) -> nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(
        vocab_size=s.vocab,
        hidden_size=s.d_model,
        num_hidden_layers=s.n_layers,
        num_attention_heads=s.n_heads,
        intermediate_size=s.d_ff,
        max_position_embeddings=s.seq,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
        use_parallel_residual=False,
        tie_word_embeddings=True,
        attention_bias=True,
        hidden_act="gelu_pytorch_tanh",  # tanh GeLU through the same kernel flm uses
        hidden_dropout=0.0,
        attention_dropout=0.0,
        layer_norm_eps=1e-5,
    )
    cfg._attn_implementation = "sdpa"
    model = GPTNeoXForCausalLM(cfg)
    assert model.lm_head.weight is model.gpt_neox.embed_in.weight, "HF embeddings are not tied"
    return model


def make_step(model: nn.Module, forward: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
    model.train()

    def step(x: Tensor, y: Tensor) -> float:
        logits = forward(x)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def measure_shape(
    name: str, s: Shape, warmup: int, repeats: int, steps: int, xpos_off: bool, progress: Progress
) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randint(0, s.vocab, (s.batch, s.seq))
    y = torch.randint(0, s.vocab, (s.batch, s.seq))
    flm, hf = build_flm(s, xpos=True), build_hf(s)
    runners = {
        "flm": make_step(flm, flm),
        "hf": make_step(hf, lambda t: hf(input_ids=t, use_cache=False).logits),
    }
    if xpos_off:
        flm_nx = build_flm(s, xpos=False)
        runners["flm_noxpos"] = make_step(flm_nx, flm_nx)
    names = list(runners)
    task = progress.add_task(f"{name}", total=len(names) * (warmup + repeats * steps))
    for key in names:
        for _ in range(warmup):
            runners[key](x, y)
            progress.advance(task)
    per_step: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for key in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            for _ in range(steps):
                runners[key](x, y)
            per_step[key].append((time.perf_counter() - t0) / steps)
            progress.advance(task, steps)
    return {k: s.tokens / statistics.median(v) for k, v in per_step.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 warm-up step, 3 repeats of 1 step (noisier)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both models (2)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per model (default 7, quick 3)")
    p.add_argument("--xpos-off", action="store_true", help="also time flm with xPos disabled")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["large", "small"])
    p.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results file ({RESULTS})")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    warmup = 1 if args.quick else 2
    repeats = args.repeats or (3 if args.quick else 7)
    steps = {"large": 1, "small": 1 if args.quick else 3}

    peak = matmul_peak_gflops()
    tok_s: dict[str, dict[str, float]] = {}
    with Progress(transient=True) as progress:
        for name in args.shapes:
            tok_s[name] = measure_shape(
                name, SHAPES[name], warmup, repeats, steps[name], args.xpos_off, progress
            )
    peak = max(peak, matmul_peak_gflops())  # measured before and after the run; the best counts

    result: dict[str, object] = {}
    for name, t in tok_s.items():
        fpt = SHAPES[name].flops_per_token()
        row = {
            "flm_tok_s": round(t["flm"], 1),
            "hf_tok_s": round(t["hf"], 1),
            "ratio": round(t["flm"] / t["hf"], 3),
            "flm_mfu": round(t["flm"] * fpt / (peak * 1e9), 3),
            "hf_mfu": round(t["hf"] * fpt / (peak * 1e9), 3),
        }
        if "flm_noxpos" in t:
            row["flm_noxpos_tok_s"] = round(t["flm_noxpos"], 1)
            row["ratio_noxpos"] = round(t["flm_noxpos"] / t["hf"], 3)
        result[name] = row
    result["peak_gflops"] = round(peak, 1)
    result["threads"] = args.threads
    result["quick"] = args.quick
    result["torch"] = torch.__version__
    result["machine"] = platform.processor() or platform.machine()
    line = json.dumps(result)
    print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
