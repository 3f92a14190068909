"""The FLM decoder: GPT-3 style pre-LN blocks, xPos rotary attention, GeLU MLP, tied embeddings, muP
multipliers, and the growth masks of MSG (Masked Structural Growth).

Nothing here knows about parallelism or training. Growth masks are module buffers that exist only while a
growth ramp is running; without them the forward pass is the plain one. They are non-persistent, so
``state_dict()`` has the same keys mid-ramp; checkpoints carry them through ``growth_state()``.

Masks (MSG, see docs/growth.md). One scalar ``m`` (buffer ``grow_m``) ramps 0 -> 1; boolean buffers mark the
new units. For a marked unit the mask is ``m``, otherwise 1:
- hidden: residual writes (embedding, attention out, MLP out) and LayerNorm outputs are multiplied by the
  hidden mask, and LayerNorm statistics are taken over the active dims only (weighted by the mask);
- heads: q, k, v of new heads are multiplied by the head mask;
- FFN: gelu(mask * (x W1 + b1));
- depth: h <- m * Block(h) + (1 - m) * h for new blocks; with scale_attn_by_inverse_layer_idx an old block
  that growth moved from index j to i keeps its attention factor 1/(j + 1) at m = 0 and moves to 1/(i + 1)
  linearly (buffer ``layer_from`` = j);
- muP readout multiplier: unchanged by default (the grown config's output_mult scales with d_model); with
  grow.readout = "mup" linearly interpolated from the old width's to the new width's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flm.config import ModelConfig
from flm.loss import linear_cross_entropy
from flm.mup import init_weights


def _mask(new: Tensor | None, m: Tensor) -> Tensor | None:
    """1 where ``new`` is False, ``m`` where it is True (None when no growth is running)."""
    if new is None:
        return None
    return torch.where(new, m.to(torch.float32), torch.ones((), device=new.device)).to(m.dtype)


def masked_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, mask: Tensor | None) -> Tensor:
    """LayerNorm; with a mask, mean and variance are over active dims only and the output is masked.

    At mask = 0 on the new dims this equals the old model's LayerNorm on the old dims, exactly.
    """
    if mask is None:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    msum = mask.sum()
    mean = (x * mask).sum(-1, keepdim=True) / msum
    var = ((x - mean).square() * mask).sum(-1, keepdim=True) / msum
    return ((x - mean) * torch.rsqrt(var + eps) * weight + bias) * mask


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return masked_layer_norm(x, self.weight, self.bias, self.eps, mask)


class Rotary(nn.Module):
    """Rotary embedding on all head dims, pairs interleaved (dims 2i and 2i+1 rotate together, as in
    RoFormer, GPT-J and lucidrains' rotary-embedding-torch, whose RotaryEmbedding FLM-101B's code follows),
    with optional xPos decay.

    Each pair is one complex number, so rotating is a single complex multiply by a cached table.
    (GPT-NeoX/Llama in Hugging Face pair dim i with i + head_dim/2 instead: ``flm.conversion.rotate_half_rows``
    converts q/k projection weights between the two layouts.)

    xPos (Sun et al. 2023): q is scaled by zeta^(p/scale_base), k by zeta^(-p/scale_base), so q.k decays
    with relative distance as zeta^((n - m)/scale_base). Positions are centred on max_seq_len/2 to keep the
    scales near 1; the centre cancels in q.k, and is fixed so that a KV cache stays consistent. The scales
    are folded into the tables.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hd = cfg.head_dim
        assert hd is not None
        self.head_dim = hd
        self.theta = cfg.rotary_theta
        self.xpos = cfg.xpos
        self.scale_base = cfg.xpos_scale_base
        self.center = cfg.max_seq_len // 2
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def tables(self, start: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """fp32 tables (length, 1, head_dim/2, 2) of (cos, sin) times the xPos scale, for q and for k, at
        positions start .. start+length-1; viewed as complex numbers they are the rotations."""
        key = (start, length, device)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        hd = self.head_dim
        half = torch.arange(0, hd, 2, dtype=torch.float64, device=device)
        inv_freq = 1.0 / (self.theta ** (half / hd))
        pos = torch.arange(start, start + length, dtype=torch.float64, device=device)
        angle = torch.outer(pos, inv_freq)
        scale = torch.ones_like(angle)
        if self.xpos:
            zeta = (half + 0.4 * hd) / (1.4 * hd)
            scale = zeta[None, :] ** ((pos - self.center) / self.scale_base)[:, None]
        rot = torch.stack([angle.cos(), angle.sin()], dim=-1)[:, None]  # (length, 1, hd/2, 2)
        s = scale[:, None, :, None]
        out = ((rot * s).float(), (rot / s).float())
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[key] = out
        return out

    def forward(self, q: Tensor, k: Tensor, start: int = 0) -> tuple[Tensor, Tensor]:
        """q, k: (batch, seq, heads, head_dim); rotated copies."""
        return apply_rotary(q, k, self.tables(start, q.shape[1], q.device))


Tables = tuple[Tensor, Tensor]


def document_attention(doc_ids: Tensor, tables: Tables) -> tuple[Tables, Tensor]:
    """Document masking (``data.document_mask``): rotary tables at positions that restart with every
    document, (B, T, 1, hd/2, 2), and the SDPA mask (B, 1, T, T) that lets a token see only the earlier tokens of
    its own document. ``doc_ids`` (B, T): a document index per position (flm.data.packing.document_ids)."""
    t = doc_ids.shape[-1]
    idx = torch.arange(t, device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    pos = idx - torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), dim=-1).values
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    mask = (doc_ids[:, :, None] == doc_ids[:, None, :]) & causal
    return (tables[0][pos], tables[1][pos]), mask[:, None]


def apply_rotary(q: Tensor, k: Tensor, tables: Tables) -> tuple[Tensor, Tensor]:
    """q, k rotated by ``Rotary.tables`` (computed once per forward, outside any compiled block)."""
    return _rotate(q, tables[0]), _rotate(k, tables[1])


def _rotate(x: Tensor, table: Tensor) -> Tensor:
    """Each pair (x[2i], x[2i+1]) times the complex number table[..., i, :], in fp32."""
    pairs = x.float().unflatten(-1, (-1, 2))
    if torch.compiler.is_compiling():  # inductor has no complex kernels: the same product in reals
        x0, x1 = pairs.unbind(-1)
        c, s = table.unbind(-1)
        out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1)
    else:  # eager: one complex multiply (a view, no copy, on both sides) instead of several real ops
        out = torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(table))
    return out.flatten(-2).to(x.dtype)


@dataclass
class KVCache:
    """Preallocated keys and values per layer, for incremental decoding."""

    k: list[Tensor]
    v: list[Tensor]
    pos: int = 0

    @classmethod
    def empty(cls, cfg: ModelConfig, n_layers: int, batch: int, device, dtype) -> KVCache:
        shape = (batch, cfg.n_heads, cfg.max_seq_len, cfg.head_dim)
        return cls(
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)],
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)],
        )


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, a = cfg.d_model, cfg.attn_dim
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.q = nn.Linear(d, a)
        self.k = nn.Linear(d, a)
        self.v = nn.Linear(d, a)
        self.o = nn.Linear(a, d)
        self.scale = 1.0 / (cfg.head_dim if cfg.attn_scale == "linear" else math.sqrt(cfg.head_dim))
        self.inverse_layer_scale = cfg.scale_attn_by_inverse_layer_idx  # scale / (layer + 1)
        self.upcast = cfg.reorder_and_upcast_attn
        self.dropout = cfg.dropout
        self.register_buffer("head_new", None, persistent=False)
        self.register_buffer("layer_from", None, persistent=False)  # 0-dim: the index before a depth growth

    def _moved_layer_factor(self, layer: int, m: Tensor) -> Tensor:
        """What q is multiplied by so that a block moved by depth growth from index j (``layer_from``) to
        ``layer`` scales its logits by 1/(j + 1) at m = 0 and by 1/(layer + 1) at m = 1, as the release's
        scale_attn_by_inverse_layer_idx does at its final index (SDPA already divides by layer + 1)."""
        old = 1.0 / (self.layer_from.to(torch.float32) + 1.0)
        return (layer + 1) * (old + m.to(torch.float32) * (1.0 / (layer + 1) - old))

    def forward(
        self,
        x: Tensor,
        rope: Tables,
        m: Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        doc_mask: Tensor | None = None,
    ) -> Tensor:
        """``rope``: the rotary tables of positions cache.pos .. cache.pos + seq - 1 (0 .. without a cache);
        ``doc_mask``: a (B, 1, T, T) attention mask replacing the causal one (document masking, no cache)."""
        b, t, _ = x.shape
        hd = self.head_dim  # heads = -1: a tensor-parallel rank holds only its own heads
        q = self.q(x).view(b, t, -1, hd)
        k = self.k(x).view(b, t, -1, hd)
        v = self.v(x).view(b, t, -1, hd)
        head_mask = _mask(self.head_new, m)
        if head_mask is not None:
            hm = head_mask[:, None]
            q, k, v = q * hm, k * hm, v * hm
        start = cache.pos if cache is not None else 0
        q, k = apply_rotary(q, k, rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        attn_mask, causal = None, True
        if cache is not None:
            cache.k[layer][:b, :, start : start + t] = k
            cache.v[layer][:b, :, start : start + t] = v
            k, v = cache.k[layer][:b, :, : start + t], cache.v[layer][:b, :, : start + t]
            if start > 0:
                causal = False
                if t > 1:
                    rows = torch.arange(start, start + t, device=x.device)[:, None]
                    attn_mask = rows >= torch.arange(start + t, device=x.device)[None, :]
        elif doc_mask is not None:
            attn_mask = doc_mask
        dtype = q.dtype
        if self.upcast:
            q, k, v = q.float(), k.float(), v.float()
        if self.layer_from is not None and self.inverse_layer_scale:
            q = q * self._moved_layer_factor(layer, m).to(q.dtype)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=causal and attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.scale / (layer + 1) if self.inverse_layer_scale else self.scale,
        )
        return self.o(y.to(dtype).transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)
        self.register_buffer("ffn_new", None, persistent=False)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"

    def forward(self, x: Tensor, m: Tensor) -> Tensor:
        h = self.up(x)
        ffn_mask = _mask(self.ffn_new, m)
        if ffn_mask is not None:
            h = h * ffn_mask
        return self.down(F.gelu(h, approximate=self.approximate))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model, cfg.ln_eps)
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg.d_model, cfg.ln_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.register_buffer("depth_new", None, persistent=False)  # 0-dim bool: True while ramping in

    def forward(
        self,
        h: Tensor,
        rope: Tables,
        m: Tensor,
        hidden_mask: Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
        doc_mask: Tensor | None = None,
    ) -> Tensor:
        # doc_mask by keyword: tensor parallel's input plan (sequence parallel) lists the positional inputs
        a = self.drop(self.attn(self.ln1(h, hidden_mask), rope, m, cache, layer, doc_mask=doc_mask))
        if hidden_mask is not None:
            a = a * hidden_mask
        out = h + a
        f = self.drop(self.mlp(self.ln2(out, hidden_mask), m))
        if hidden_mask is not None:
            f = f * hidden_mask
        out = out + f
        if self.depth_new is not None:  # only present (and True) while this block ramps in
            out = h + m * (out - h)
        return out


class FLM(nn.Module):
    """Decoder-only LM. ``forward(tokens) -> logits`` (float32 logits over the padded vocabulary).

    For pipeline parallelism, ``tok_emb`` or ``ln_f`` may be set to None: the forward then takes hidden
    states in and/or gives hidden states out, and ``blocks`` (a ModuleDict keyed "0".."L-1") may be a subset.
    A floating-point input is always taken as hidden states: the last stage keeps a ``tok_emb`` only for the
    tied readout (see flm.distributed.pipeline).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb: nn.Embedding | None = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.n_layers)})
        self.ln_f: LayerNorm | None = LayerNorm(cfg.d_model, cfg.ln_eps)
        self.rotary = Rotary(cfg)
        self.register_buffer("grow_m", torch.zeros(()), persistent=False)
        self.register_buffer("hidden_new", None, persistent=False)
        # muP readout multiplier of the width we are growing from; None when no growth is running.
        self.readout_mult_from: float | None = None
        self.init_weights()

    # ----- parameterization -------------------------------------------------------------------------
    @property
    def readout_mult(self) -> float:
        return self.cfg.output_mult / self.cfg.width_mult

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """N(0, std) weights, zero biases, unit LayerNorms, with the muP init scales of flm.mup: hidden
        matrices have variance init_std^2 / (fan_in / base fan_in), output projections are further divided
        by sqrt(2 * n_layers), the embedding keeps init_std."""
        init_weights(self, generator)

    # ----- growth masks ------------------------------------------------------------------------------
    @property
    def growing(self) -> bool:
        return self.hidden_new is not None or self.readout_mult_from is not None or any(
            b.depth_new is not None or b.attn.head_new is not None or b.mlp.ffn_new is not None
            or b.attn.layer_from is not None for b in self.blocks.values()
        )

    def set_mask_value(self, m: float) -> None:
        self.grow_m.fill_(float(m))

    def end_growth(self) -> None:
        """Remove every mask: the forward pass is the plain one again."""
        self.hidden_new = None
        self.readout_mult_from = None
        for b in self.blocks.values():
            b.depth_new = None
            b.attn.head_new = None
            b.attn.layer_from = None
            b.mlp.ffn_new = None

    def growth_state(self) -> dict[str, Tensor]:
        """Mask buffers and m, as tensors (empty when no growth is running)."""
        if not self.growing:
            return {}
        out: dict[str, Tensor] = {"grow_m": self.grow_m.detach().clone()}
        if self.readout_mult_from is not None:
            out["readout_mult_from"] = torch.tensor(self.readout_mult_from, dtype=torch.float64)
        if self.hidden_new is not None:
            out["hidden_new"] = self.hidden_new
        for i, b in self.blocks.items():
            for key, t in (("depth_new", b.depth_new), ("head_new", b.attn.head_new), ("ffn_new", b.mlp.ffn_new),
                           ("layer_from", b.attn.layer_from)):
                if t is not None:
                    out[f"blocks.{i}.{key}"] = t
        return out

    def load_growth_state(self, state: dict[str, Tensor]) -> None:
        self.end_growth()
        dev = self.grow_m.device
        for key, t in state.items():
            if key == "grow_m":
                self.grow_m.fill_(float(t))
            elif key == "readout_mult_from":
                self.readout_mult_from = float(t)
            elif key == "hidden_new":
                self.hidden_new = t.to(dev, torch.bool)
            else:
                _, i, name = key.split(".")
                b = self.blocks[i]
                owner = {"depth_new": b, "head_new": b.attn, "ffn_new": b.mlp, "layer_from": b.attn}[name]
                setattr(owner, name, t.to(dev, torch.int64 if name == "layer_from" else torch.bool))

    # ----- forward ------------------------------------------------------------------------------------
    def forward(
        self,
        tokens: Tensor,
        cache: KVCache | None = None,
        *,
        targets: Tensor | None = None,
        loss_weights: Tensor | None = None,
        doc_ids: Tensor | None = None,
    ) -> Tensor:
        """Logits (batch, seq, padded vocab), fp32. With ``targets``: the scalar sum over tokens of
        ``loss_weights * cross_entropy`` instead (weights default to 1/#tokens: the mean), computed in row
        chunks without materialising the logits (see ``linear_cross_entropy``); same value and gradients,
        less memory traffic. It goes through ``forward`` so that wrappers (FSDP2) see a normal call.
        ``doc_ids`` (B, T): document masking (see ``document_attention``); None: plain causal attention.
        """
        m = self.grow_m
        hidden_mask = _mask(self.hidden_new, m)
        if self.tok_emb is not None and not tokens.is_floating_point():  # token ids, not hidden states
            h = self.tok_emb(tokens)
            if self.cfg.input_mult != 1.0:
                h = h * self.cfg.input_mult
            if hidden_mask is not None:
                h = h * hidden_mask
            h = self.drop(h)
        else:
            h = tokens
        rope = self.rotary.tables(cache.pos if cache is not None else 0, h.shape[1], h.device)
        doc_mask = None
        if doc_ids is not None:
            rope, doc_mask = document_attention(doc_ids, rope)
        for i, block in self.blocks.items():
            if doc_mask is None:  # the plain call, as wrappers (checkpointing, pipeline stages) expect it
                h = block(h, rope, m, hidden_mask, cache, int(i))
            else:
                h = block(h, rope, m, hidden_mask, cache, int(i), doc_mask)
        if cache is not None:
            cache.pos += h.shape[1]
        if self.ln_f is None:
            return h
        h = self.ln_f(h, hidden_mask)
        if targets is not None:
            return self.lm_loss(h, targets, loss_weights)
        return self.logits(h)

    def _readout_mult(self) -> float:
        mult = self.readout_mult
        if self.readout_mult_from is not None:
            mult = self.readout_mult_from + float(self.grow_m) * (mult - self.readout_mult_from)
        return mult

    def logits(self, h: Tensor) -> Tensor:
        assert self.tok_emb is not None, "tied readout needs the embedding (first and last pipeline stage)"
        return F.linear(h * self._readout_mult(), self.tok_emb.weight)

    def lm_loss(self, h: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
        """sum(weights * cross_entropy(logits(h), targets)) from final hidden states ``h``."""
        assert self.tok_emb is not None, "tied readout needs the embedding (first and last pipeline stage)"
        h = (h * self._readout_mult()).flatten(0, -2)
        y = targets.reshape(-1)
        w = torch.full(y.shape, 1.0 / max(y.numel(), 1), device=h.device) if weights is None else weights
        return linear_cross_entropy(h, self.tok_emb.weight, y, w.reshape(-1).float())

    def new_cache(self, batch: int) -> KVCache:
        p = next(self.parameters())
        return KVCache.empty(self.cfg, len(self.blocks), batch, p.device, p.dtype)
