"""Training throughput of flm vs Hugging Face GPTNeoXForCausalLM of the same shape, fp32 on the CPU.

One training step = forward + mean cross-entropy over all tokens + backward + AdamW step (same settings,
fused, as flm's trainer runs it), on the same batch for every model. All models run in the same process,
interleaved (the order alternates every repeat, so drift and other processes hit all alike), on the same
threads; warm-up steps are excluded; tokens/s are medians, ``ratio`` (HF step time / flm step time) is the
median of per-repeat ratios and ``ratio_best`` the ratio of the fastest steps. The run also reports how much
CPU other processes took (``others_cpu_pct``): on a shared machine, rerun when it is near 0. Per-step times go
to the results file.

HF is GPT-NeoX with flm's shape: rotary on all dims, sequential residual, tied embeddings, biases, tanh GeLU
(gelu_pytorch_tanh, the same kernel), SDPA attention. Three flm rows:
- ``flm``: as flm's trainer runs it, the loss out of ``model(x, targets=y)`` (readout and cross-entropy in
  row chunks, see flm.loss.linear_cross_entropy), xPos on (the FLM default);
- ``flm_logits``: ``model(x)`` logits then F.cross_entropy, exactly HF's path around the model;
- ``flm_noxpos`` (with --xpos-off): as ``flm`` with xPos off.

A fourth row, ``bound``, is the same shape stripped to the kernels MFU counts: embedding lookup, per block
one fused QKV matmul, SDPA causal attention, the output and two MLP matmuls (no activation) and residual
adds, then flm's chunked readout + cross-entropy and the same AdamW. No LayerNorm, GeLU, biases, rotary or
masks: whatever a full model adds costs time on top of it, so ``bound_mfu`` is the practical MFU ceiling on
this machine and ``flm_of_bound`` (flm tok/s over bound tok/s) says how much flm loses around its kernels.

MFU = model FLOPs/s (flm.flops.flops_per_token) over the best fp32 n x n matmul rate measured in
the same run on the same threads (flm.hardware.measure_matmul_peak, before, between and after the
shapes).

    .venv/bin/python benchmarks/throughput.py            # full run (about 4 minutes on 2 cores)
    .venv/bin/python benchmarks/throughput.py --quick    # a short, noisier run
    # on a GPU (scripts/gpu_check.sh): bf16 autocast at a GPU-sized shape (d 2048, 24 layers, seq 2048);
    # MFU is then against the measured bf16 matmul peak of that GPU
    python benchmarks/throughput.py --device cuda --dtype bf16 --shapes gpu --quick

Prints one JSON line and writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from flm.config import ModelConfig  # noqa: E402
from flm.flops import flops_per_token  # noqa: E402
from flm.hardware import measure_matmul_peak  # noqa: E402
from flm.loss import linear_cross_entropy  # noqa: E402
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

    def model_config(self, xpos: bool = True) -> ModelConfig:
        return ModelConfig(
            vocab_size=self.vocab,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_ff=self.d_ff,
            max_seq_len=self.seq,
            xpos=xpos,
        )

    def flops_per_token(self) -> float:
        """Training model FLOPs per token: 6 x matmul weights (blocks and readout) + attention scores and
        values over the whole context (12 L seq d), as flm's trainer counts them for its MFU."""
        return flops_per_token(self.model_config(), self.seq)


SHAPES = {
    # compute-bound: matmuls dominate, the question is whether anything is wasted around them
    "large": Shape(d_model=512, n_layers=8, n_heads=8, d_ff=2048, seq=512, vocab=8192, batch=4),
    # overhead-bound, like the demo config: small matmuls, many small ops, large logits per FLOP
    "small": Shape(d_model=128, n_layers=4, n_heads=4, d_ff=512, seq=256, vocab=8192, batch=16),
    # GPU-sized (--device cuda): a 1.3B-parameter model at FLM-101B's sequence length
    "gpu": Shape(d_model=2048, n_layers=24, n_heads=16, d_ff=8192, seq=2048, vocab=50304, batch=4),
    # for tests of the options: seconds on a CPU
    "tiny": Shape(d_model=64, n_layers=2, n_heads=2, d_ff=256, seq=64, vocab=512, batch=2),
}
DEFAULT_REPEATS = {"large": 7, "small": 15, "gpu": 10, "tiny": 3}


def peak_gflops(seconds: float = 2.0, device: str = "cpu") -> float:
    """Best matmul rate (the trainer's MFU roof), GFLOP/s: fp32 on the current CPU threads, bf16 on CUDA."""
    return measure_matmul_peak(device, seconds=seconds) / 1e9


def build_flm(s: Shape, xpos: bool) -> FLM:
    return FLM(s.model_config(xpos))


class KernelBound(nn.Module):
    """The matmul + attention skeleton of a shape (see the module docstring, ``bound``)."""

    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.s = s
        d, ff = s.d_model, s.d_ff

        def w(rows: int, cols: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(rows, cols) * 0.02)

        self.emb = w(s.vocab, d)
        self.layers = nn.ModuleList(
            nn.ParameterList([w(3 * d, d), w(d, d), w(ff, d), w(d, ff)]) for _ in range(s.n_layers)
        )

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        b, t, nh = x.shape[0], x.shape[1], self.s.n_heads
        h = F.embedding(x, self.emb)
        for qkv_w, o_w, up_w, down_w in self.layers:  # type: ignore[misc]
            q, k, v = F.linear(h, qkv_w).view(b, t, 3, nh, -1).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
            h = h + F.linear(a, o_w)
            h = h + F.linear(F.linear(h, up_w), down_w)
        y = y.reshape(-1)
        return linear_cross_entropy(h.flatten(0, 1), self.emb, y, torch.full(y.shape, 1.0 / y.numel()))


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


LossFn = Callable[[Tensor, Tensor], Tensor]


def logits_loss(forward: Callable[[Tensor], Tensor]) -> LossFn:
    """Mean cross-entropy over all tokens from the model's logits (what HF's own loss computes)."""

    def loss(x: Tensor, y: Tensor) -> Tensor:
        logits = forward(x)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))

    return loss


def make_step(model: nn.Module, loss_fn: LossFn, bf16: bool = False) -> Callable[[Tensor, Tensor], float]:
    """forward + loss + backward + AdamW step; the same optimizer settings for every model (fused, as flm's
    trainer); with ``bf16`` the forward and loss under bf16 autocast on the model's device (fp32 weights)."""
    dev = next(model.parameters()).device.type
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    model.train()

    def step(x: Tensor, y: Tensor) -> float:
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def measure_shape(
    name: str, s: Shape, warmup: int, repeats: int, xpos_off: bool, progress: Progress, device: str = "cpu",
    bf16: bool = False,
) -> dict[str, list[float]]:
    """Seconds per training step of each variant, one entry per repeat (each step ends in ``loss.item()``,
    which waits for the device)."""
    torch.manual_seed(0)
    x = torch.randint(0, s.vocab, (s.batch, s.seq), device=device)
    y = torch.randint(0, s.vocab, (s.batch, s.seq), device=device)
    flm, flm_l = build_flm(s, xpos=True).to(device), build_flm(s, xpos=True).to(device)
    hf, bound = build_hf(s).to(device), KernelBound(s).to(device)
    runners = {
        # flm as its trainer runs it: the loss comes out of forward (chunked readout + cross-entropy)
        "flm": make_step(flm, lambda a, b: flm(a, targets=b), bf16),
        # flm through the same logits -> F.cross_entropy path as HF
        "flm_logits": make_step(flm_l, logits_loss(flm_l), bf16),
        "hf": make_step(hf, logits_loss(lambda t: hf(input_ids=t, use_cache=False).logits), bf16),
        "bound": make_step(bound, bound, bf16),
    }
    if xpos_off:
        flm_nx = build_flm(s, xpos=False).to(device)
        runners["flm_noxpos"] = make_step(flm_nx, lambda a, b: flm_nx(a, targets=b), bf16)
    names = list(runners)
    task = progress.add_task(name, total=len(names) * (warmup + repeats))
    for key in names:
        for _ in range(warmup):
            runners[key](x, y)
            progress.advance(task)
    per_step: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):  # interleaved, the order alternating, so that drift hits every variant alike
        for key in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            runners[key](x, y)
            per_step[key].append(time.perf_counter() - t0)
            progress.advance(task)
    return per_step


def summarize(s: Shape, per_step: dict[str, list[float]], peak: float) -> dict[str, float]:
    """Median tokens/s and MFU per variant; ratios are medians of the per-repeat ratios (paired in time)."""
    fpt = s.flops_per_token()

    def tok_s(key: str) -> float:
        return s.tokens / statistics.median(per_step[key])

    def ratio(key: str) -> float:
        return statistics.median(h / f for h, f in zip(per_step["hf"], per_step[key]))

    def ratio_best(key: str) -> float:  # the least disturbed repeat of each
        return min(per_step["hf"]) / min(per_step[key])

    row = {
        "flm_tok_s": round(tok_s("flm"), 1),
        "hf_tok_s": round(tok_s("hf"), 1),
        "ratio": round(ratio("flm"), 3),
        "flm_mfu": round(tok_s("flm") * fpt / (peak * 1e9), 3),
        "hf_mfu": round(tok_s("hf") * fpt / (peak * 1e9), 3),
        "flm_logits_tok_s": round(tok_s("flm_logits"), 1),
        "ratio_logits": round(ratio("flm_logits"), 3),
        "ratio_best": round(ratio_best("flm"), 3),
        "bound_tok_s": round(tok_s("bound"), 1),
        "bound_mfu": round(tok_s("bound") * fpt / (peak * 1e9), 3),
        "flm_of_bound": round(statistics.median(b / f for b, f in zip(per_step["bound"], per_step["flm"])), 3),
    }
    if "flm_noxpos" in per_step:
        row["flm_noxpos_tok_s"] = round(tok_s("flm_noxpos"), 1)
        row["ratio_noxpos"] = round(ratio("flm_noxpos"), 3)
    return row


def cpu_busy() -> float:
    """Seconds of CPU time all processes on this machine have used (from /proc/stat; 0 where absent)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_in_child(name: str, args: argparse.Namespace, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Each shape runs in a fresh process: the allocator state (which decides whether the large temporary
    tensors of a step are recycled or mapped anew every step) is then that of a training run of this shape,
    not whatever the previous shape left behind."""
    cmd = [sys.executable, __file__, "--one-shape", name, "--threads", str(args.threads)]
    cmd += ["--warmup", str(warmup), "--repeats", str(repeats)] + (["--xpos-off"] if args.xpos_off else [])
    cmd += ["--device", args.device, "--dtype", args.dtype]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 warm-up step and 3 timed steps per model (noisy)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both models (2)")
    p.add_argument(
        "--repeats", type=int, default=None, help="timed steps per model (default: large 7, small 15; quick 3)"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per model first (default 5, quick 1)")
    p.add_argument("--xpos-off", action="store_true", help="also time flm with xPos disabled")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["large", "small"])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the models train (cpu)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="fp32, or bf16 autocast (fp32)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results file ({RESULTS})")
    p.add_argument("--one-shape", choices=sorted(SHAPES), help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("throughput.py: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    repeats = dict(DEFAULT_REPEATS) if args.repeats is None else dict.fromkeys(SHAPES, args.repeats)
    if args.quick and args.repeats is None:
        repeats = dict.fromkeys(SHAPES, 3)
    if args.one_shape:
        with Progress(transient=True, console=Console(stderr=True)) as progress:
            name = args.one_shape
            times = measure_shape(name, SHAPES[name], warmup, repeats[name], args.xpos_off, progress, args.device,
                                  args.dtype == "bf16")
        print(json.dumps(times))
        return 0

    load_before, busy_before = os.getloadavg()[0], cpu_busy()
    t_start = time.perf_counter()
    peaks = [peak_gflops(device=args.device)]
    per_step: dict[str, dict[str, list[float]]] = {}
    for name in args.shapes:
        per_step[name] = measure_in_child(name, args, warmup, repeats[name])
        peaks.append(peak_gflops(device=args.device))
    peak = max(peaks)  # measured before, between and after the shapes; the best counts

    result: dict[str, object] = {name: summarize(SHAPES[name], t, peak) for name, t in per_step.items()}
    result["peak_gflops"] = round(peak, 1)
    result["threads"] = args.threads
    result["device"], result["dtype"] = args.device, args.dtype
    result["quick"] = args.quick
    result["torch"] = torch.__version__
    result["machine"] = cpu_name()
    result["loadavg"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    busy, wall = cpu_busy() - busy_before, time.perf_counter() - t_start
    own = sum(os.times()[:4])  # this process and its children
    result["others_cpu_pct"] = round(100 * max(busy - own, 0.0) / (wall * (os.cpu_count() or 1)), 1)
    if result["others_cpu_pct"] > 10:  # type: ignore[operator]
        print(
            f"warning: other processes used {result['others_cpu_pct']}% of the CPUs during the run, so "
            "tokens/s and MFU are low and the ratios noisy: rerun on an idle machine",
            file=sys.stderr,
        )
    print(json.dumps(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    raw = {name: {k: [round(v, 4) for v in vals] for k, vals in t.items()} for name, t in per_step.items()}
    args.out.write_text(json.dumps({**result, "step_seconds": raw}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
