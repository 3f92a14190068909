"""Sampling a continuation from an FLM: temperature and top-k, using the model's KV cache."""

from __future__ import annotations

import torch
from torch import Tensor

from flm.errors import FlmError
from flm.model import FLM


def _sample(logits: Tensor, temperature: float, top_k: int | None, vocab: int, gen: torch.Generator | None) -> Tensor:
    logits = logits[:, :vocab].float()
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(-1)


@torch.no_grad()
def generate(
    model: FLM,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    vocab_size: int | None = None,
    stop_ids: tuple[int, ...] = (),
    use_cache: bool = True,
    seed: int | None = None,
) -> list[int]:
    """Continue ``prompt``; temperature 0 is greedy. Without the cache every step re-runs the whole prefix
    (the reference the cached path is tested against)."""
    if not prompt:
        raise FlmError("the prompt is empty; give --prompt at least one token")
    limit = model.cfg.max_seq_len
    if len(prompt) >= limit:
        raise FlmError(
            f"the prompt is {len(prompt)} tokens; the model reads at most {limit}: shorten it to leave room"
        )
    if len(prompt) + max_new_tokens > limit:
        max_new_tokens = max(0, limit - len(prompt))
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    vocab = vocab_size or model.cfg.vocab_size
    out = list(prompt)
    cache = model.new_cache(1) if use_cache else None
    pending = torch.tensor([prompt], device=device)
    for _ in range(max_new_tokens):
        logits = model(pending, cache) if cache is not None else model(torch.tensor([out], device=device))
        nxt = int(_sample(logits[:, -1], temperature, top_k, vocab, gen))
        out.append(nxt)
        if nxt in stop_ids:
            break
        pending = torch.tensor([[nxt]], device=device)
    return out
