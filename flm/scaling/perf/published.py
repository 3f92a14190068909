"""Published large-scale training runs with their reported throughput, to check the performance model against
(benchmarks/perf_model.py, tests/scaling/test_perf_published.py). Each row gives what its source publishes
(shape, sequence, global batch, layout, GPU, network, reported TFLOP/s per GPU and whether that counts model
or hardware FLOPs) and says in ``assumed`` what it does not publish and we had to choose. The rows carry no
efficiency figures: the model runs every row with the same global constants (flm.scaling.perf.step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flm.scaling.perf.step import Layout, Shape


@dataclass(frozen=True)
class Run:
    name: str
    shape: Shape
    batch: int  # sequences per step
    layout: Layout
    gpu: str
    network: str
    reported_tflops: float  # per GPU
    counts: Literal["model", "hardware"]  # MFU-style (no recompute) or HFU-style (recompute counted)
    source: str
    assumed: str = ""


def _gpt(d: int, layers: int, heads: int, vocab: int = 51200, seq: int = 2048, **kw) -> Shape:
    return Shape(d_model=d, n_layers=layers, n_heads=heads, head_dim=d // heads, d_ff=4 * d, vocab=vocab,
                 seq_len=seq, **kw)


_FLM = "FLM-101B (Li et al. 2023, arXiv 2309.03852), Table 2"
_FLM_ASSUMED = ("16B/51B shapes (configs/flm-101b.toml), 1 sequence per micro-batch, 1F1B, no recompute beyond "
                "flash attention's, the network (800 Gb/s per node, the top of the README's recommendation)")
_MEG = "Narayanan et al. 2021 (arXiv 2104.04473), Table 1 (also NVIDIA/Megatron-LM README)"
_MEG_ASSUMED = "1 sequence per micro-batch, non-interleaved 1F1B (not given per row)"
_MEG_ROWS = [  # params, heads, d, layers, tp, pp, GPUs, batch, TFLOP/s per GPU
    ("1.7B", 24, 2304, 24, 1, 1, 32, 512, 137.0),
    ("3.6B", 32, 3072, 30, 2, 1, 64, 512, 138.0),
    ("7.5B", 32, 4096, 36, 4, 1, 128, 512, 142.0),
    ("18.4B", 48, 6144, 40, 8, 1, 256, 1024, 135.0),
    ("39.1B", 64, 8192, 48, 8, 2, 512, 1536, 138.0),
    ("76.1B", 80, 10240, 60, 8, 4, 1024, 1792, 140.0),
    ("145.6B", 96, 12288, 80, 8, 8, 1536, 2304, 148.0),
    ("310.1B", 128, 16384, 96, 8, 16, 1920, 2160, 155.0),
    ("529.6B", 128, 20480, 105, 8, 35, 2520, 2520, 163.0),
    ("1008.0B", 160, 25600, 128, 8, 64, 3072, 3072, 163.0),
]
_KOR = ("Korthikanti et al. 2022 (arXiv 2205.05198, MLSys 2023), abstract: 530B on 2,240 A100s, MFU 54.2% "
        "with sequence parallelism + selective recompute, 42.1% with full recompute")
_KOR_ASSUMED = "TP 8 x PP 35 (its Table 3) so DP 8, 280 micro-batches of 1 per replica (batch 2,240), 1F1B"
_KOR_530B = _gpt(20480, 105, 128, rotary="none")
_LLAMA3 = Shape(d_model=16384, n_layers=126, n_heads=128, head_dim=128, d_ff=53248, vocab=128256, seq_len=8192,
                kv_heads=8, gated=True)
_L3 = "Llama 3 (Dubey et al. 2024, arXiv 2407.21783), Table 4 (BF16 MFU); glennklockwood.com/garden/llama-3.1"
_L3_ASSUMED = "1 sequence per micro-batch, interleaved with 2 virtual stages, no recompute"


def runs() -> list[Run]:
    flm_16b = _gpt(5632, 40, 44, vocab=100352, rotary="eager")  # xPos in PyTorch (HF modeling_flm.py)
    flm_51b = _gpt(10240, 40, 80, vocab=100352, rotary="eager")
    flm_101b = _gpt(10240, 80, 80, vocab=100352, rotary="eager")
    out = [
        Run("FLM-101B stage 16B", flm_16b, 2304, Layout(2, 1, 96, sequence_parallel=True), "A800", "ib-4x200",
            162.0, "hardware", _FLM, _FLM_ASSUMED),
        Run("FLM-101B stage 51B", flm_51b, 2304, Layout(4, 2, 24, sequence_parallel=True), "A800", "ib-4x200",
            160.0, "hardware", _FLM, _FLM_ASSUMED),
        Run("FLM-101B stage 101B", flm_101b, 2160, Layout(4, 4, 12, sequence_parallel=True), "A800",
            "ib-4x200", 165.0, "hardware", _FLM, _FLM_ASSUMED),
    ]
    for name, heads, d, layers, tp, pp, n, batch, tflops in _MEG_ROWS:
        lay = Layout(tp, pp, n // (tp * pp), recompute=1.0, dp_mode="ddp", flash=False)
        out.append(Run(f"Megatron-LM GPT {name}", _gpt(d, layers, heads, rotary="none"), batch, lay, "A100",
                       "ib-hdr-8x200", tflops, "hardware", _MEG, _MEG_ASSUMED))
    for label, lay, mfu in (("SP + selective recompute", Layout(8, 35, 8, sequence_parallel=True,
                                                                  attn_recompute=True, flash=False), 54.2),
                            ("full recompute", Layout(8, 35, 8, recompute=1.0, flash=False), 42.1)):
        out.append(Run(f"Megatron-LM GPT 530B, {label}", _KOR_530B, 2240, lay, "A100", "ib-hdr-8x200",
                       round(mfu / 100 * 312, 1), "model", _KOR, _KOR_ASSUMED))
    out += [
        Run("BLOOM-176B", _gpt(14336, 70, 112, vocab=250880, rotary="none"), 2048,
            Layout(4, 12, 8, microbatch=2, recompute=1.0, flash=False), "A100", "opa-4x100", 150.0, "hardware",
            "BLOOM (BigScience 2022, arXiv 2211.05100) Section 3.4; bigscience.notion.site BigScience-176B-Model",
            "full recompute, 1F1B"),
        Run("OPT-175B", _gpt(12288, 96, 96, vocab=50272, rotary="none"), 992,
            Layout(8, 1, 124, microbatch=8, recompute=1.0, dp_mode="fsdp", flash=False), "A100", "ib-hdr-8x200",
            147.0, "hardware", "OPT (Zhang et al. 2022, arXiv 2205.01068) Section 2.4 ('up to 147 TFLOP/s')",
            "~2M-token batch as 8 sequences per FSDP rank in one micro-batch, full recompute, network"),
        Run("GLM-130B", Shape(d_model=12288, n_layers=70, n_heads=96, head_dim=128, d_ff=32768, vocab=150528,
                              seq_len=2048, gated=True), 4224,
            Layout(4, 8, 24, recompute=1.0, flash=False), "A100-40", "ib-hdr-8x200", 135.0, "hardware",
            "GLM-130B (Zeng et al. 2022, arXiv 2210.02414) Section 3 (135 TFLOP/s, HFU 43.3%)",
            "1 sequence per micro-batch, 1F1B"),
        Run("Llama 3 405B, 8,192 GPUs", _LLAMA3, 2048,
            Layout(8, 16, 64, schedule="interleaved", dp_mode="fsdp"), "H100", "roce-8x400", 430.0, "model",
            _L3, _L3_ASSUMED),
        Run("Llama 3 405B, 16,384 GPUs", _LLAMA3, 2048,
            Layout(8, 16, 128, schedule="interleaved", dp_mode="fsdp"), "H100", "roce-8x400", 400.0, "model",
            _L3, _L3_ASSUMED),
    ]
    return out
