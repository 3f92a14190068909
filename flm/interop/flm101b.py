"""The released FLM-101B format (Hugging Face ``CofeAI/FLM-101B``, ``model_type = "flm"``) read into flm.

What its published config.json says, and how it maps (the config keys are confirmed; the tensor names and
layouts follow the GPT-2 code its modeling file says it is based on, which could not be checked against the
real weights without hub access: see docs/interop.md):
- GPT-2 naming and Conv1D weights stored (in, out): ``transformer.h.{i}.attn.c_attn`` holds q | k | v along
  its output columns, heads contiguous; ``c_proj``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln_1``, ``ln_2``, ``ln_f``,
  ``wte`` (tied readout, no ``wpe``: rotary);
- rotary in lucidrains' interleaved-pair layout (flm's own) with xPos (``rotary_use_xpos``,
  ``rotary_xpos_scale_base``, ``rotary_theta``);
- μP: ``mup_base_width``, ``input_mult``, ``output_mult`` (MuReadout: logits = W (output_mult x / width_mult)),
  attention 1/head_dim; ``scale_attn_by_inverse_layer_idx`` / ``reorder_and_upcast_attn`` as GPT-2 defines them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flm.config import ModelConfig, model_config_from_dict
from flm.errors import FlmError
from flm.interop.hf_source import HFWeights
from flm.interop.stream import Recipe
from flm.io import atomic_write

Read = Callable[[str], Tensor]
CODE_DIR = Path(__file__).resolve().parent / "hf_code"
CODE_FILES = ("configuration_flm.py", "modeling_flm.py")
AUTO_MAP = {"AutoConfig": "configuration_flm.FLMConfig", "AutoModelForCausalLM": "modeling_flm.FLMForCausalLM"}

_TANH_GELUS = ("gelu_fast", "gelu_new", "gelu_pytorch_tanh")
# flm name -> GPT-2 name inside block i (Conv1D weights are transposed on the way)
_BLOCK = {"ln1": "ln_1", "attn.o": "attn.c_proj", "ln2": "ln_2", "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}


def flm_config_from_101b(hf: dict[str, Any], vocab: int, where: str) -> ModelConfig:
    act = str(hf.get("activation_function", "gelu_fast"))
    problems = [
        (
            f"relative_encoding {hf.get('relative_encoding')!r} (flm has rotary)",
            hf.get("relative_encoding", "rotary") != "rotary",
        ),
        ("scale_attn_weights = false (flm always scales attention)", not hf.get("scale_attn_weights", True)),
        ("untied embeddings (tie_word_embeddings = false)", hf.get("tie_word_embeddings") is False),
        (f"activation {act!r}", act not in ("gelu", *_TANH_GELUS)),
    ]
    bad = [what for what, flag in problems if flag]
    if bad:
        raise FlmError(f"{where}: an FLM-101B-format variant flm cannot represent: {bad[0]}")
    try:
        d = int(hf["n_embd"])
        mup = bool(hf.get("use_mup", False))
        data: dict[str, Any] = {
            "vocab_size": vocab,
            "d_model": d,
            "n_layers": int(hf["n_layer"]),
            "n_heads": int(hf["n_head"]),
            "d_ff": int(hf.get("n_inner") or 4 * d),
            "max_seq_len": int(hf.get("n_positions", 2048)),
            "rotary_theta": float(hf.get("rotary_theta", 10000.0)),
            "xpos": bool(hf.get("rotary_use_xpos", False)),
            "xpos_scale_base": float(hf.get("rotary_xpos_scale_base", 512)),
            "ln_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
            "init_std": float(hf.get("initializer_range", 0.02)),
            "activation": "gelu" if act == "gelu" else "gelu_tanh",
            "scale_attn_by_inverse_layer_idx": bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
            "reorder_and_upcast_attn": bool(hf.get("reorder_and_upcast_attn", False)),
            "attn_scale": str(hf.get("attn_scale") or ("linear" if mup else "sqrt")),
            "input_mult": float(hf.get("input_mult", 1.0)),
            "output_mult": float(hf.get("output_mult", 1.0)),
        }
        if mup:
            data["mup_base_width"] = int(hf["mup_base_width"])
    except (KeyError, TypeError, ValueError) as e:
        raise FlmError(f"{where}: config.json lacks or garbles {e}; give a complete FLM-101B config") from None
    cfg = model_config_from_dict(data, f"{where}/config.json, as flm's [model]")
    factor = hf.get("mup_scale_factor")
    if mup and factor is not None and abs(float(factor) - cfg.width_mult) > 1e-6 * cfg.width_mult:
        raise FlmError(f"{where}: mup_scale_factor {factor} != n_embd / mup_base_width = {cfg.width_mult:g}")
    return cfg


def find_prefix(weights: HFWeights, where: str) -> tuple[str, int]:
    """The tensor-name prefix ("transformer." or none) and the embedding's row count."""
    prefix = "transformer." if "transformer.wte.weight" in weights.shapes else ""
    if f"{prefix}wte.weight" not in weights.shapes:
        raise FlmError(f"{where}: no transformer.wte.weight; not FLM-101B-format (GPT-2 naming) weights")
    return prefix, weights.shapes[f"{prefix}wte.weight"][0]


def import_recipes(cfg: ModelConfig, weights: HFWeights, prefix: str) -> list[Recipe]:
    d, a, f32, vocab = cfg.d_model, cfg.attn_dim, torch.float32, cfg.padded_vocab_size
    read = weights.read

    def emb() -> Tensor:
        e = read(f"{prefix}wte.weight")
        return torch.cat([e, e.new_zeros(vocab - e.shape[0], d)]) if e.shape[0] < vocab else e

    def qkv(i: int, p: str, j: int) -> Any:
        def make() -> Tensor:
            t = read(f"{prefix}h.{i}.attn.c_attn.{p}")
            return t[..., j * a : (j + 1) * a].T if p == "weight" else t[j * a : (j + 1) * a]

        return make

    def conv(name: str, transpose: bool) -> Any:
        return (lambda: read(name).T) if transpose else (lambda: read(name))

    out = [Recipe("tok_emb.weight", (vocab, d), f32, emb)]
    for i in range(cfg.n_layers):
        for j, n in enumerate("qkv"):
            out += [Recipe(f"blocks.{i}.attn.{n}.weight", (a, d), f32, qkv(i, "weight", j)),
                    Recipe(f"blocks.{i}.attn.{n}.bias", (a,), f32, qkv(i, "bias", j))]  # fmt: skip
        for ours, (theirs, t) in _names(i, prefix).items():
            shape = weights.shapes[theirs]
            out.append(Recipe(ours, shape[::-1] if t else shape, f32, conv(theirs, t)))
    out += [Recipe(f"ln_f.{p}", (d,), f32, conv(f"{prefix}ln_f.{p}", False)) for p in ("weight", "bias")]
    return out


def _names(i: int, prefix: str = "transformer.") -> dict[str, tuple[str, bool]]:
    """flm name -> (FLM-format name, stored transposed) of block i's tensors other than q/k/v."""
    out = {}
    for ours, theirs in _BLOCK.items():
        for p in ("weight", "bias"):
            out[f"blocks.{i}.{ours}.{p}"] = (f"{prefix}h.{i}.{theirs}.{p}", p == "weight" and not ours.startswith("ln"))
    return out


def check_exportable(cfg: ModelConfig, where: str) -> None:
    if cfg.attn_dim != cfg.d_model:
        raise FlmError(
            f"{where}: attention width {cfg.attn_dim} != d_model {cfg.d_model}; the FLM format ties them, "
            "so this model cannot be exported"
        )


def flm_format_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json of the FLM format (the released FLM-101B keys) for the shipped remote code."""
    return {
        "architectures": ["FLMForCausalLM"],
        "model_type": "flm",
        "auto_map": AUTO_MAP,
        "vocab_size": cfg.padded_vocab_size, "n_embd": cfg.d_model, "n_head": cfg.n_heads, "n_inner": cfg.d_ff,
        "n_layer": cfg.n_layers, "n_positions": cfg.max_seq_len, "layer_norm_epsilon": cfg.ln_eps,
        "activation_function": "gelu" if cfg.activation == "gelu" else "gelu_fast",
        "relative_encoding": "rotary", "rotary_theta": cfg.rotary_theta, "rotary_use_xpos": cfg.xpos,
        "rotary_xpos_scale_base": cfg.xpos_scale_base, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": cfg.scale_attn_by_inverse_layer_idx,
        "reorder_and_upcast_attn": cfg.reorder_and_upcast_attn, "use_mup": cfg.mup_base_width is not None,
        "mup_base_width": cfg.mup_base_width, "mup_scale_factor": cfg.width_mult, "input_mult": cfg.input_mult,
        "output_mult": cfg.output_mult, "attn_scale": cfg.attn_scale, "initializer_range": cfg.init_std,
        "tie_word_embeddings": True, "use_cache": True,
    }  # fmt: skip


def export_recipes(
    cfg: ModelConfig, read: Read, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype
) -> list[Recipe]:
    """FLM-format (GPT-2 naming) tensors from an flm state: c_attn = [q | k | v] columns, Conv1D (in, out)."""

    def c_attn(i: int, p: str) -> Callable[[], Tensor]:
        def make() -> Tensor:
            parts = [read(f"blocks.{i}.attn.{n}.{p}") for n in "qkv"]
            return torch.cat([t.T for t in parts], dim=1) if p == "weight" else torch.cat(parts)

        return make

    def conv(name: str, transpose: bool) -> Callable[[], Tensor]:
        return (lambda: read(name).T) if transpose else (lambda: read(name))

    d, a = cfg.d_model, cfg.attn_dim
    out = [Recipe("transformer.wte.weight", shapes["tok_emb.weight"], dtype, conv("tok_emb.weight", False))]
    for i in range(cfg.n_layers):
        out += [Recipe(f"transformer.h.{i}.attn.c_attn.weight", (d, 3 * a), dtype, c_attn(i, "weight")),
                Recipe(f"transformer.h.{i}.attn.c_attn.bias", (3 * a,), dtype, c_attn(i, "bias"))]  # fmt: skip
        for ours, (theirs, t) in _names(i).items():
            out.append(Recipe(theirs, shapes[ours][::-1] if t else shapes[ours], dtype, conv(ours, t)))
    out += [Recipe(f"transformer.ln_f.{p}", (d,), dtype, conv(f"ln_f.{p}", False)) for p in ("weight", "bias")]
    return out


def write_code(folder: Path) -> None:
    """The remote code (configuration_flm.py, modeling_flm.py) beside the weights."""
    for name in CODE_FILES:
        atomic_write(folder / name, (CODE_DIR / name).read_bytes())
