"""The FLM block as a GPT-NeoX block (no xPos): config.json both ways and the tensor-by-tensor weight mapping.

Without xPos an FLM block is exactly GPTNeoX's sequential-residual block with rotary on every head dim:
- q/k rows move from flm's interleaved rotary pairs to NeoX's rotate-half layout (``rotate_half_rows``);
- q, k, v are fused per head into ``query_key_value`` (rows: head 0's q, k, v, then head 1's, ...);
- NeoX scales attention by 1/sqrt(head_dim): flm's μP 1/head_dim is folded into the q rows, and the μP
  readout multiplier into the final LayerNorm (logits = (s*LN(h)) E = LN'(h) E), so embeddings stay tied.
The original flm model config travels in config.json under ``"flm"``: an import of an flm export undoes the
folds and gets the same config (and, where the folded factors are 1 or powers of two, bitwise the same weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from flm.config import ModelConfig, config_to_dict, model_config_from_dict
from flm.conversion import rotate_half_rows
from flm.errors import FlmError
from flm.interop.stream import Recipe

FLM_KEY = "flm"  # config.json key holding the flm model config of an flm export
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
Read = Callable[[str], Tensor]


def q_fold(cfg: ModelConfig) -> float:
    """Factor on q that turns NeoX's 1/sqrt(head_dim) into flm's attention scale."""
    hd = cfg.head_dim
    assert hd is not None
    return 1.0 / math.sqrt(hd) if cfg.attn_scale == "linear" else 1.0


def readout_fold(cfg: ModelConfig) -> float:
    return cfg.output_mult / cfg.width_mult


def neox_problem(cfg: ModelConfig) -> str | None:
    """What a GPT-NeoX folder cannot express of this model (None: nothing)."""
    problems = {
        "xpos = true (GPT-NeoX has no xPos)": cfg.xpos,
        f"attention width {cfg.attn_dim} != d_model {cfg.d_model} (GPT-NeoX ties them)": cfg.attn_dim != cfg.d_model,
        f"input_mult = {cfg.input_mult} (GPT-NeoX has no embedding multiplier)": cfg.input_mult != 1.0,
        "scale_attn_by_inverse_layer_idx = true (not a GPT-NeoX option)": cfg.scale_attn_by_inverse_layer_idx,
    }
    return next((k for k, v in problems.items() if v), None)


def special_ids(special: dict[str, int]) -> dict[str, int]:
    """BOS = EOS: flm conditions every text on EOS (see hf_tokenizer.py)."""
    return {"bos_token_id": special["eos"], "eos_token_id": special["eos"], "pad_token_id": special["pad"]}


def flm_section(cfg: ModelConfig) -> dict[str, Any]:
    return {FLM_KEY: {"format": 1, "model": config_to_dict(cfg)}}


def neox_config(cfg: ModelConfig, special: dict[str, int]) -> dict[str, Any]:
    theta = cfg.rotary_theta
    return (
        {
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox",
            "vocab_size": cfg.padded_vocab_size,
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "intermediate_size": cfg.d_ff,
            "hidden_act": "gelu_pytorch_tanh" if cfg.activation == "gelu_tanh" else "gelu",
            "max_position_embeddings": cfg.max_seq_len,
            "layer_norm_eps": cfg.ln_eps,
            "initializer_range": cfg.init_std,
            "use_parallel_residual": False,
            "tie_word_embeddings": True,
            "attention_bias": True,
            "attention_dropout": 0.0,
            "hidden_dropout": 0.0,
            # transformers 4.x reads rotary_pct / rotary_emb_base, 5.x rope_parameters
            "rotary_pct": 1.0,
            "rotary_emb_base": theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": 1.0},
            "use_cache": True,
            "dtype": "float32",
        }
        | special_ids(special)
        | flm_section(cfg)
    )


def _rope(hf: dict[str, Any]) -> tuple[str, float, float]:
    rp = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = str(rp.get("rope_type", rp.get("type", "default")))
    theta = float(rp.get("rope_theta", hf.get("rotary_emb_base", hf.get("rope_theta", 10000.0))))
    pct = float(rp.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)))
    return kind, theta, pct


def flm_config_from_neox(hf: dict[str, Any], has_lm_head: bool, where: str) -> ModelConfig:
    """The flm model of a GPT-NeoX config.json, or one line naming the variant flm cannot represent."""
    kind, theta, pct = _rope(hf)
    act = str(hf.get("hidden_act", "gelu"))
    tied = bool(hf.get("tie_word_embeddings", False))  # transformers' default for gpt_neox: untied
    if not tied and not has_lm_head:  # transformers would make up a random head: the weights are incomplete
        raise FlmError(
            f"{where}: config.json says tie_word_embeddings = false (or leaves it unset) but the weights hold no "
            "output head (embed_out.weight); give the complete folder, or set tie_word_embeddings = true if the "
            "model reuses its input embedding as its head"
        )
    problems = [
        (
            "parallel residual (use_parallel_residual = true); flm blocks are sequential",
            hf.get("use_parallel_residual", True),
        ),
        (f"partial rotary (rotary on {pct:g} of each head); flm rotates every head dim", pct != 1.0),
        ("untied input and output embeddings (tie_word_embeddings = false); flm ties them", not tied),
        (
            "no attention biases (attention_bias = false); flm's projections have biases",
            not hf.get("attention_bias", True),
        ),
        (f"rotary scaling {kind!r}; flm has plain rotary", kind != "default"),
        (f"activation {act!r}; flm has gelu and its tanh approximation", act not in ("gelu", *_TANH_GELUS)),
    ]
    bad = [what for what, flag in problems if flag]
    if bad:
        raise FlmError(f"{where}: a GPT-NeoX variant flm cannot represent: {bad[0]}")
    try:
        d, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        data = {
            "vocab_size": int(hf["vocab_size"]),
            "d_model": d,
            "n_layers": int(hf["num_hidden_layers"]),
            "n_heads": heads,
            "d_ff": int(hf.get("intermediate_size", 4 * d)),
            "max_seq_len": int(hf.get("max_position_embeddings", 2048)),
            "rotary_theta": theta,
            "xpos": False,
            "ln_eps": float(hf.get("layer_norm_eps", 1e-5)),
            "init_std": float(hf.get("initializer_range", 0.02)),
            "activation": "gelu" if act == "gelu" else "gelu_tanh",
        }
    except (KeyError, TypeError, ValueError) as e:
        raise FlmError(f"{where}: config.json lacks or garbles {e}; give a complete GPT-NeoX config") from None
    return model_config_from_dict(data, f"{where}/config.json, as flm's [model]")


def _fuse_qkv(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """flm's q, k, v rows (NeoX rotary layout already) -> query_key_value rows, per head [q_h, k_h, v_h]."""
    return torch.stack([t.unflatten(0, (heads, -1)) for t in (q, k, v)], dim=1).flatten(0, 2)


def split_qkv(qkv: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    q, k, v = qkv.unflatten(0, (heads, 3, -1)).unbind(1)
    return q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)


def _block_names(i: int) -> dict[str, str]:
    """flm name -> NeoX name of a block's tensors, except q/k/v."""
    neox = f"gpt_neox.layers.{i}."
    pairs = {"ln1": "input_layernorm", "attn.o": "attention.dense", "ln2": "post_attention_layernorm",
             "mlp.up": "mlp.dense_h_to_4h", "mlp.down": "mlp.dense_4h_to_h"}  # fmt: skip
    return {f"blocks.{i}.{a}.{p}": f"{neox}{b}.{p}" for a, b in pairs.items() for p in ("weight", "bias")}


def export_recipes(
    cfg: ModelConfig, read: Read, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype
) -> list[Recipe]:
    """GPT-NeoX tensors built from an flm state read by name; each recipe reads only what it needs."""
    hd, heads, r = cfg.head_dim, cfg.n_heads, readout_fold(cfg)
    assert hd is not None

    def qkv(i: int, p: str) -> Callable[[], Tensor]:
        def make() -> Tensor:
            a = f"blocks.{i}.attn."
            q = rotate_half_rows(read(f"{a}q.{p}"), hd) * q_fold(cfg)
            return _fuse_qkv(q, rotate_half_rows(read(f"{a}k.{p}"), hd), read(f"{a}v.{p}"), heads)

        return make

    def copy(name: str, scale: float = 1.0) -> Callable[[], Tensor]:
        return (lambda: read(name) * scale) if scale != 1.0 else (lambda: read(name))

    out = [Recipe("gpt_neox.embed_in.weight", shapes["tok_emb.weight"], dtype, copy("tok_emb.weight"))]
    for i in range(cfg.n_layers):
        names = _block_names(i)
        for p in ("weight", "bias"):
            shape = shapes[f"blocks.{i}.attn.q.{p}"]
            out.append(
                Recipe(
                    f"gpt_neox.layers.{i}.attention.query_key_value.{p}", (3 * shape[0], *shape[1:]), dtype, qkv(i, p)
                )
            )
        out += [Recipe(neox, shapes[ours], dtype, copy(ours)) for ours, neox in names.items()]
    for p in ("weight", "bias"):
        out.append(Recipe(f"gpt_neox.final_layer_norm.{p}", shapes[f"ln_f.{p}"], dtype, copy(f"ln_f.{p}", r)))
    return out


def import_recipes(
    cfg: ModelConfig,
    read: Read,
    shapes: dict[str, tuple[int, ...]],
    folds: tuple[float, float],
    dtype: torch.dtype = torch.float32,
) -> list[Recipe]:
    """flm tensors from a GPT-NeoX state; ``folds`` = (q factor, readout factor) the export applied (to undo).
    The embedding is padded with zero rows to the padded vocabulary."""
    hd, heads = cfg.head_dim, cfg.n_heads
    qf, rf = folds
    assert hd is not None
    vocab = cfg.padded_vocab_size

    def emb() -> Tensor:
        e = read("gpt_neox.embed_in.weight")
        if e.shape[0] < vocab:
            e = torch.cat([e, e.new_zeros(vocab - e.shape[0], e.shape[1])])
        return e

    last: dict[str, tuple[Tensor, Tensor, Tensor]] = {}  # the fused tensor being split: read once, not 3 times

    def split(name: str) -> tuple[Tensor, Tensor, Tensor]:
        if name not in last:
            last.clear()
            last[name] = split_qkv(read(name), heads)
        return last[name]

    def part(i: int, p: str, which: int) -> Callable[[], Tensor]:
        def make() -> Tensor:
            t = split(f"gpt_neox.layers.{i}.attention.query_key_value.{p}")[which]
            if which == 2:
                return t
            t = rotate_half_rows(t, hd, inverse=True)
            return t / qf if which == 0 and qf != 1.0 else t

        return make

    def copy(name: str, scale: float = 1.0) -> Callable[[], Tensor]:
        return (lambda: read(name) / scale) if scale != 1.0 else (lambda: read(name))

    d = cfg.d_model
    out = [Recipe("tok_emb.weight", (vocab, d), dtype, emb)]
    for i in range(cfg.n_layers):
        fused = shapes[f"gpt_neox.layers.{i}.attention.query_key_value.weight"]
        for p in ("weight", "bias"):
            shape = (fused[0] // 3, *fused[1:]) if p == "weight" else (fused[0] // 3,)
            out += [Recipe(f"blocks.{i}.attn.{n}.{p}", shape, dtype, part(i, p, j)) for j, n in enumerate("qkv")]
        out += [Recipe(ours, shapes[neox], dtype, copy(neox)) for ours, neox in _block_names(i).items()]
    for p in ("weight", "bias"):
        out.append(Recipe(f"ln_f.{p}", (d,), dtype, copy(f"gpt_neox.final_layer_norm.{p}", rf)))
    return out
