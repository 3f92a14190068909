"""Training FLOPs per token of a model shape.

FLOPs per token follow Narayanan et al. 2021 (Megatron-LM, SC21, eq. 3), which the paper uses. For one
token of a block with width d, attention width a, FFN width f and context s, the forward pass costs
``8·d·a + 4·d·f`` FLOPs in matmuls plus ``4·s·a`` in attention scores and values; the logits cost
``2·d·V``. Training is three forwards' worth (forward + backward); recomputing a block's activations
adds one more forward of that block. With a = d and f = 4d this is the paper's
``72·l·h²·(1 + s/6h + V/12lh)`` per token without recompute and ``96·l·h²·(1 + s/6h + V/16lh)`` with it.
The alternative ``6n`` formula is 6N + 12·l·s·a (Chowdhery et al. 2022, Appendix B).

Two FLOP counts run side by side:
- model FLOPs (no recompute): the work the model needs; MFU, zettaFLOPs and the trainer use these;
- hardware FLOPs (with the recompute the plan configures): what the GPUs execute. Measured TFLOP/s per
  GPU (Megatron's count, the paper's Table 2 "utilization") are hardware FLOP/s, so a stage's time is
  ``tokens · hardware FLOPs per token / (GPUs · TFLOP/s)``. A stage that gives an MFU instead takes
  ``tokens · model FLOPs per token / (GPUs · MFU · peak)``.
"""

from __future__ import annotations

from typing import Literal

from flm.config import ModelConfig
from flm.errors import FlmError

Formula = Literal["narayanan", "6n"]


def _block_forward_flops(m: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs of all transformer blocks, per token (matmuls + attention over the context)."""
    d, a, f = m.d_model, m.attn_dim, m.d_ff
    assert f is not None
    per_layer = 2 * (4 * d * a + 2 * d * f) + 4 * seq_len * a
    return float(m.n_layers * per_layer)


def _check_recompute(recompute: bool | float) -> float:
    r = float(recompute)
    if not 0.0 <= r <= 1.0:
        raise FlmError(f"recompute fraction {r} is outside 0..1: give the share of blocks recomputed")
    return r


def flops_per_token(
    model_cfg: ModelConfig, seq_len: int, recompute: bool | float = False, formula: Formula = "narayanan"
) -> float:
    """Training FLOPs (forward + backward) per token.

    ``recompute``: False = model FLOPs; True = every block recomputes its activations (one more forward);
    a float = that share of the blocks does (Megatron's --recompute-num-layers / n_layers).
    """
    r = _check_recompute(recompute)
    blocks = _block_forward_flops(model_cfg, seq_len)
    if formula == "narayanan":
        logits = 2.0 * model_cfg.d_model * model_cfg.padded_vocab_size
        return (3.0 + r) * blocks + 3.0 * logits
    if formula == "6n":
        attn = 4.0 * model_cfg.n_layers * seq_len * model_cfg.attn_dim
        block_params = model_cfg.num_params(embeddings=False)
        return 6.0 * model_cfg.num_params() + 3.0 * attn + r * (2.0 * block_params + attn)
    raise FlmError(f"unknown FLOPs formula {formula!r}: use 'narayanan' or '6n'")
