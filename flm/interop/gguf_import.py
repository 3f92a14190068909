"""A GPT-NeoX GGUF (what `flm export gguf` writes, llama.cpp's layout) read straight into flm's model.

transformers has no GPT-NeoX GGUF loader, so `flm eval` reads such a file itself with the ``gguf`` package:
the metadata becomes a GPT-NeoX config.json (neox.py turns it into flm's model config, refusing the variants
flm cannot represent), the tensors are renamed back to GPT-NeoX's (``attn_qkv``'s [q; k; v] to per-head
rows) and go through the same import recipes as `flm import hf`. An flm export also carries its flm model
config (``flm.model``) and its tokenizer (``tokenizer.huggingface.json``): the model read back is the
exported one, μP folds undone. Other GGUFs get a byte-level BPE built from ``tokenizer.ggml.tokens``/``merges``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, decoders, pre_tokenizers
from tokenizers import Tokenizer as HFBackend
from tokenizers.models import BPE
from torch import Tensor

from flm.data.tokenizer import HFTokenizer, Tokenizer
from flm.errors import FlmError
from flm.interop.gguf_export import _NAMES, _TOKEN_CONTROL, ARCH, FLM_MODEL_KEY, HF_JSON_KEY, gguf_name
from flm.interop.hf_import import exported_config
from flm.interop.neox import FLM_KEY, flm_config_from_neox, import_recipes, q_fold, readout_fold
from flm.model import FLM


def open_gguf(path: Path) -> Any:
    """A ``gguf.GGUFReader`` of the file (one FlmError line if it is not a readable GGUF)."""
    return _reader(path)


def gguf_architecture(reader: Any, path: Path) -> str:
    """``general.architecture`` of an opened GGUF file."""
    return str(_field(reader, "general.architecture", path))


def load_gguf(path: Path, reader: Any = None) -> tuple[FLM, Tokenizer]:
    """(flm model in eval mode, tokenizer) of a GPT-NeoX GGUF file (``reader``: the file already opened)."""
    reader = reader if reader is not None else _reader(path)
    arch = _field(reader, "general.architecture", path)
    if arch != ARCH:
        raise FlmError(f"{path}: flm reads GGUF architecture {ARCH!r}, this file is {arch!r}")
    tensors = {t.name: t for t in reader.tensors}
    if any(int(t.tensor_type) != 0 for t in tensors.values()):  # GGMLQuantizationType.F32
        raise FlmError(f"{path}: flm reads fp32 GPT-NeoX GGUFs (as `flm export gguf` writes); this one is quantized")
    heads = int(_field(reader, f"{ARCH}.attention.head_count", path))

    def read(hf_name: str) -> Tensor:
        t = torch.from_numpy(tensors[gguf_name(hf_name)].data.copy()).float()
        if ".attention.query_key_value." in hf_name:  # llama.cpp's [q; k; v] -> per head [q_h, k_h, v_h]
            t = t.unflatten(0, (3, heads, -1)).transpose(0, 1).flatten(0, 2)
        return t

    shapes = {hf: tuple(t.data.shape) for hf, t in _hf_names(tensors).items()}
    hf = _neox_config(reader, tensors, heads, path)
    base = flm_config_from_neox(hf, has_lm_head=not hf["tie_word_embeddings"], where=str(path))
    rows = shapes["gpt_neox.embed_in.weight"][0]
    cfg = exported_config(hf, base, rows, str(path))
    folds = (q_fold(cfg), readout_fold(cfg)) if cfg is not None else (1.0, 1.0)
    tok = _tokenizer(reader, path)
    cfg = cfg or base.model_copy(update={"vocab_size": max(rows, tok.vocab_size)})
    model = FLM(cfg)
    model.load_state_dict({r.name: r.make() for r in import_recipes(cfg, read, shapes, folds)}, strict=True)
    return model.eval(), tok


def _reader(path: Path) -> Any:
    try:
        import gguf  # optional dependency (pip install 'flm[eval]')
    except ImportError:
        raise FlmError(f"{path}: reading a .gguf model needs the gguf package: pip install 'flm[eval]'") from None
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # a truncated or foreign file: numpy/ValueError from the reader
        raise FlmError(f"{path}: not a readable GGUF file ({type(e).__name__}: {str(e)[:200]})") from None


def _field(reader: Any, key: str, path: Path, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is not None:
            return default
        raise FlmError(f"{path}: the GGUF metadata lacks {key}")
    return field.contents()


def _hf_names(tensors: dict[str, Any]) -> dict[str, Any]:
    """GPT-NeoX name -> GGUF tensor, for every tensor llama.cpp's layout maps (``output`` is the readout)."""
    out = {"gpt_neox.embed_in.weight": tensors["token_embd.weight"]}
    for p in ("weight", "bias"):
        out[f"gpt_neox.final_layer_norm.{p}"] = tensors[f"output_norm.{p}"]
    blocks = {n.split(".")[1] for n in tensors if n.startswith("blk.")}
    for i in sorted(blocks, key=int):
        for module in _NAMES:  # the exporter's table, read backwards
            for p in ("weight", "bias"):
                hf = f"gpt_neox.layers.{i}.{module}.{p}"
                if gguf_name(hf) in tensors:
                    out[hf] = tensors[gguf_name(hf)]
    return out


def _neox_config(reader: Any, tensors: dict[str, Any], heads: int, path: Path) -> dict[str, Any]:
    """The GPT-NeoX config.json the GGUF metadata stands for (plus the flm section of an flm export)."""
    a = ARCH
    d = int(_field(reader, f"{a}.embedding_length", path))
    emb, out = tensors["token_embd.weight"], tensors.get("output.weight")
    tied = out is None or bool((out.data == emb.data).all())
    hf: dict[str, Any] = {
        "vocab_size": int(emb.data.shape[0]),
        "hidden_size": d,
        "num_hidden_layers": int(_field(reader, f"{a}.block_count", path)),
        "num_attention_heads": heads,
        "intermediate_size": int(_field(reader, f"{a}.feed_forward_length", path)),
        "max_position_embeddings": int(_field(reader, f"{a}.context_length", path)),
        "layer_norm_eps": float(_field(reader, f"{a}.attention.layer_norm_epsilon", path)),
        "use_parallel_residual": bool(_field(reader, f"{a}.use_parallel_residual", path, True)),
        "rotary_pct": float(_field(reader, f"{a}.rope.dimension_count", path)) / (d // heads),
        "rotary_emb_base": float(_field(reader, f"{a}.rope.freq_base", path, 10000.0)),
        "hidden_act": "gelu_pytorch_tanh",  # llama.cpp's GELU is the tanh approximation
        "attention_bias": "blk.0.attn_qkv.bias" in tensors,
        "tie_word_embeddings": tied,
    }
    if FLM_MODEL_KEY in reader.fields:
        hf[FLM_KEY] = {"model": json.loads(_field(reader, FLM_MODEL_KEY, path))}
    return hf


def _tokenizer(reader: Any, path: Path) -> Tokenizer:
    """flm's export carries the tokenizer whole; otherwise a byte-level BPE of the GGUF's tokens and merges."""
    if HF_JSON_KEY in reader.fields:
        return HFTokenizer(HFBackend.from_str(_field(reader, HF_JSON_KEY, path)))
    tokens = list(_field(reader, "tokenizer.ggml.tokens", path))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", path, [])]
    backend = HFBackend(BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    types = list(_field(reader, "tokenizer.ggml.token_type", path, []))
    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i, kind in enumerate(types) if kind == _TOKEN_CONTROL])  # fmt: skip
    tok = HFTokenizer(backend)
    eos = int(_field(reader, "tokenizer.ggml.eos_token_id", path, tok.eos_id))
    tok.special["eos"] = eos  # the file's own end of text conditions every document, as flm's EOS does
    return tok
