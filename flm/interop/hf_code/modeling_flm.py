"""FLM for transformers (remote code shipped by `flm export hf`; no flm install needed).

GPT-3-style pre-LN blocks with GPT-2 tensor names (Conv1D weights stored (in, out)), rotary embeddings on
interleaved pairs (2i, 2i+1) with xPos decay, GeLU MLP, tied embeddings and the μP multipliers: the same
function as flm's model.py. xPos scales q by zeta^((p - c)/scale_base) and k by its inverse with a fixed centre
c = n_positions // 2, so keys in the KV cache (transformers' DynamicCache) stay valid as decoding goes on.
Works with transformers' current ``cache`` argument and the older ``past_key_values`` one.
"""

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_flm import FLMConfig

_CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


class Conv1D(nn.Module):
    """GPT-2's linear layer: weight (in, out), y = x W + b."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


def rotary_tables(config, start, length, device):
    """cos, sin and the xPos scale (fp32, (length, head_dim / 2)) at positions start .. start + length - 1."""
    hd = config.n_embd // config.n_head
    half = torch.arange(0, hd, 2, dtype=torch.float64, device=device)
    pos = torch.arange(start, start + length, dtype=torch.float64, device=device)
    angle = torch.outer(pos, 1.0 / (config.rotary_theta ** (half / hd)))
    scale = torch.ones_like(angle)
    if config.rotary_use_xpos:
        zeta = (half + 0.4 * hd) / (1.4 * hd)
        scale = zeta[None, :] ** ((pos - config.n_positions // 2) / config.rotary_xpos_scale_base)[:, None]
    return angle.cos().float(), angle.sin().float(), scale.float()


def rotate(x, cos, sin, scale):
    """x (batch, heads, seq, head_dim): each pair (x[2i], x[2i+1]) rotated by angle i, times scale i."""
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos * scale, sin * scale
    return torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1).flatten(-2).to(x.dtype)


class FLMAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        d = config.n_embd
        self.n_head, self.head_dim, self.layer_idx = config.n_head, d // config.n_head, layer_idx
        self.c_attn = Conv1D(d, 3 * d)
        self.c_proj = Conv1D(d, d)
        scale = 1.0 / (self.head_dim if config.attn_scale == "linear" else math.sqrt(self.head_dim))
        if config.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.scale = scale
        self.upcast = config.reorder_and_upcast_attn

    def forward(self, x, tables, cache, mask):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.n_head, self.head_dim).transpose(1, 2) for z in self.c_attn(x).split(d, dim=2))
        cos, sin, scale = tables
        q, k = rotate(q, cos, sin, scale), rotate(k, cos, sin, 1.0 / scale)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        dtype = q.dtype
        if self.upcast:
            q, k, v = q.float(), k.float(), v.float()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.scale)
        return self.c_proj(y.to(dtype).transpose(1, 2).reshape(b, t, d))


class FLMBlock(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        d, f = config.n_embd, config.n_inner or 4 * config.n_embd
        self.ln_1 = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.attn = FLMAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = Conv1D(d, f), Conv1D(f, d)
        self.approximate = "none" if config.activation_function == "gelu" else "tanh"

    def forward(self, h, tables, cache, mask):
        h = h + self.attn(self.ln_1(h), tables, cache, mask)
        return h + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(h)), approximate=self.approximate))


class FLMPreTrainedModel(PreTrainedModel):
    config_class = FLMConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["FLMBlock"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, Conv1D):
            module.weight.data.normal_(0.0, std)
            module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


class FLMModel(FLMPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList([FLMBlock(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids, attention_mask=None, cache=None):
        b, t = input_ids.shape
        start = cache.get_seq_length() if cache is not None else 0
        h = self.wte(input_ids) * self.config.input_mult
        tables = rotary_tables(self.config, start, t, h.device)
        mask = None
        if start > 0 or (attention_mask is not None and not bool(attention_mask.all())):
            rows = torch.arange(start, start + t, device=h.device)[:, None]
            mask = (rows >= torch.arange(start + t, device=h.device)[None, :])[None, None]
            if attention_mask is not None:
                mask = mask & attention_mask[:, None, None, -(start + t) :].bool()
        for block in self.h:
            h = block(h, tables, cache, mask)
        return self.ln_f(h)


class FLMForCausalLM(FLMPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.transformer = FLMModel(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.wte

    def get_output_embeddings(self):
        return None  # the readout is the (tied) input embedding, applied in forward

    def forward(self, input_ids=None, attention_mask=None, cache=None, past_key_values=None, labels=None,
                use_cache=None, **kwargs):  # fmt: skip
        cache = cache if cache is not None else past_key_values
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        h = self.transformer(input_ids, attention_mask, cache if use_cache else None)
        c = self.config
        mult = c.output_mult / (c.n_embd / c.mup_base_width if c.use_mup and c.mup_base_width else 1.0)
        logits = F.linear(h * mult, self.transformer.wte.weight).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None})
