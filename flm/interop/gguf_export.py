"""`flm export gguf CKPT OUT.gguf`: an flm checkpoint without xPos as a GGUF file in llama.cpp's GPT-NeoX layout.

The layout is what llama.cpp's convert_hf_to_gguf.py writes for GPTNeoXForCausalLM: architecture
``gptneox``, tensors ``token_embd``, ``blk.N.attn_norm``, ``blk.N.attn_qkv`` (q, k, v of all heads one after the
other, rotary in the rotate-half layout), ``blk.N.attn_output``, ``blk.N.ffn_norm``, ``blk.N.ffn_up``,
``blk.N.ffn_down``, ``output_norm``, ``output`` (the tied embedding, written out), sequential residual, rotary on
every head dim; a byte-level BPE tokenizer (``tokenizer.ggml.model = gpt2``) with every id of the padded
vocabulary (padding ids as unused ``[PADn]`` tokens). The μP folds are those of the transformers export
(neox.py). Written with the ``gguf`` package's writer, one tensor at a time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flm.config import config_to_dict
from flm.data.tokenizer import HFTokenizer, TiktokenTokenizer, Tokenizer, load_tokenizer
from flm.errors import FlmError
from flm.interop.hf_export import IOReport, open_flm_checkpoint
from flm.interop.hf_tokenizer import hf_backend
from flm.interop.neox import export_recipes, neox_problem
from flm.interop.stream import Recipe, largest_bytes
from flm.io import is_disk_full, no_space

ARCH = "gptneox"
FLM_MODEL_KEY = "flm.model"  # the flm model config (JSON), as config.json's "flm" section of the HF export
HF_JSON_KEY = "tokenizer.huggingface.json"  # llama.cpp's key for the whole tokenizer.json
# HF GPT-NeoX name (after the layer prefix) -> GGUF name
_NAMES = {
    "input_layernorm": "attn_norm", "attention.query_key_value": "attn_qkv", "attention.dense": "attn_output",
    "post_attention_layernorm": "ffn_norm", "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down",
}  # fmt: skip
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_UNUSED = 1, 3, 5


def gguf_name(hf_name: str) -> str:
    if hf_name == "gpt_neox.embed_in.weight":
        return "token_embd.weight"
    if hf_name.startswith("gpt_neox.final_layer_norm."):
        return "output_norm." + hf_name.rsplit(".", 1)[1]
    _, _, i, rest = hf_name.split(".", 3)
    module, param = rest.rsplit(".", 1)
    return f"blk.{i}.{_NAMES[module]}.{param}"


def _qkv_blocks(t: Tensor, heads: int) -> Tensor:
    """HF's per-head [q_h, k_h, v_h] rows -> llama.cpp's [q; k; v] (all heads each)."""
    return t.unflatten(0, (heads, 3, -1)).transpose(0, 1).flatten(0, 2)


def _vocab(tok: Tokenizer, size: int) -> tuple[list[str], list[int], list[str]]:
    """Token strings (byte-level), token types and merges over every id 0 .. size - 1."""
    backend = hf_backend(tok)
    model = json.loads(backend.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    added = backend.get_added_tokens_decoder()
    special = set(tok.special.values()) | {i for i, t in added.items() if t.special}
    tokens, types = [], []
    for i in range(size):
        s = backend.id_to_token(i)
        if s is None:
            tokens.append(f"[PAD{i}]")
            types.append(_TOKEN_UNUSED)
        else:
            tokens.append(s)
            types.append(_TOKEN_CONTROL if i in special else _TOKEN_NORMAL)
    return tokens, types, merges


def _metadata(writer: Any, cfg: Any, tok: Tokenizer, name: str) -> None:
    import gguf

    hd = cfg.head_dim
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)  # as llama.cpp's convert_hf_to_gguf.py (--outtype f32)
    writer.add_string(FLM_MODEL_KEY, json.dumps(config_to_dict(cfg)))
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_rope_dimension_count(hd)
    writer.add_rope_freq_base(cfg.rotary_theta)
    writer.add_head_count(cfg.n_heads)
    writer.add_parallel_residual(False)
    writer.add_layer_norm_eps(cfg.ln_eps)
    tokens, types, merges = _vocab(tok, cfg.padded_vocab_size)
    writer.add_tokenizer_model("gpt2")
    pre = "dbrx" if isinstance(tok, TiktokenTokenizer) and tok.name == "cl100k_base" else "gpt-2"
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.eos_id)  # flm conditions every text on EOS (hf_tokenizer.py)
    writer.add_eos_token_id(tok.eos_id)
    writer.add_pad_token_id(tok.pad_id)
    writer.add_add_bos_token(False)
    writer.add_string(HF_JSON_KEY, hf_backend(tok).to_str())  # flm eval reads the exact tokenizer back


def _recipes(cfg: Any, src: Any) -> list[Recipe]:
    out = []
    for r in export_recipes(cfg, src.read, src.shapes, torch.float32):
        make = r.make
        if ".attention.query_key_value." in r.name:
            make = (lambda m: lambda: _qkv_blocks(m(), cfg.n_heads))(r.make)
        out.append(Recipe(gguf_name(r.name), r.shape, r.dtype, make))
        if r.name == "gpt_neox.embed_in.weight":
            out.append(Recipe("output.weight", r.shape, r.dtype, r.make))  # llama.cpp's readout
    return out


def export_gguf(ckpt: str | os.PathLike[str], out: str | os.PathLike[str]) -> IOReport:
    import gguf  # heavy optional dependency (pip install 'flm[eval]' or gguf)

    t0 = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() != ".gguf":  # llama.cpp and `flm eval` tell a GGUF by its name
        raise FlmError(f"{out}: a GGUF file's name ends in .gguf; give {out.with_suffix('.gguf')}")
    if out.exists():
        raise FlmError(f"output file {out} already exists; nothing is overwritten: pick a new path")
    folder, cfg, src = open_flm_checkpoint(ckpt)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    try:
        problem = neox_problem(cfg)
        if problem is not None:
            raise FlmError(f"{folder}: llama.cpp's GPT-NeoX layout cannot hold this model: {problem}")
        tok = load_tokenizer(folder)
        if not isinstance(tok, (HFTokenizer, TiktokenTokenizer)):
            raise FlmError(f"{folder}: tokenizer {tok.describe()} has no GGUF form")
        recipes = _recipes(cfg, src)
        out.parent.mkdir(parents=True, exist_ok=True)
        writer = gguf.GGUFWriter(tmp, ARCH)
        _metadata(writer, cfg, tok, folder.name)
        for r in recipes:
            writer.add_tensor_info(r.name, r.shape, torch.empty(0).numpy().dtype, torch.Size(r.shape).numel() * 4)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for r in recipes:
            writer.write_tensor_data(r.make().to(torch.float32).contiguous().numpy())
        writer.close()
        tmp.rename(out)
    except BaseException as e:
        full = is_disk_full(e, tmp)  # before the space is freed: numpy reports a full disk as a short write
        tmp.unlink(missing_ok=True)
        if full:
            raise no_space(e, out) from e
        raise
    finally:
        src.close()
    return IOReport(out, out.stat().st_size, time.perf_counter() - t0, largest_bytes(recipes))
