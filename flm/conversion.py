"""Weight-layout conversions between flm and other model families' checkpoints."""

from __future__ import annotations

from torch import Tensor


def rotate_half_rows(t: Tensor, head_dim: int, inverse: bool = False) -> Tensor:
    """Reorder the output rows of a q or k projection (weight or bias) from flm's interleaved rotary layout
    to the rotate-half layout of GPT-NeoX/Llama in Hugging Face (``inverse``: back). Attention is unchanged
    when q and k are permuted alike, so this is how a checkpoint moves between the two conventions."""
    if inverse:
        return t.unflatten(0, (-1, 2, head_dim // 2)).transpose(1, 2).flatten(0, 2)
    return t.unflatten(0, (-1, head_dim // 2, 2)).transpose(1, 2).flatten(0, 2)
