"""Cost of document masking (``data.document_mask``) vs plain causal attention: forward + backward time of
the demo's stage-1 model on packed windows, CPU fp32.

    python benchmarks/document_mask.py [--steps 20] [--batch 16] [--seq 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from flm.config import ModelConfig
from flm.data.packing import document_ids
from flm.model import FLM

EOS = 1


def _time(model: FLM, x: torch.Tensor, doc: torch.Tensor | None, steps: int) -> float:
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            t0 = time.perf_counter()
        loss = model(x, targets=x, doc_ids=doc)
        loss.backward()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = FLM(ModelConfig(vocab_size=4096, d_model=128, n_layers=4, n_heads=4, max_seq_len=args.seq))
    x = torch.randint(2, 4096, (args.batch, args.seq))
    x[torch.rand(x.shape) < 1 / 60] = EOS  # documents of ~60 tokens, like teacher samples
    doc = document_ids(x, EOS)
    plain = _time(model, x, None, args.steps)
    masked = _time(model, x, doc, args.steps)
    plain = min(plain, _time(model, x, None, args.steps))  # the faster of before and after: no order bias
    print(f"threads {torch.get_num_threads()}, batch {args.batch} x {args.seq}: causal {plain * 1e3:.1f} ms/step, "
          f"document mask {masked * 1e3:.1f} ms/step ({masked / plain:.2f}x)")


if __name__ == "__main__":
    main()
