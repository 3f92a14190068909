"""`flm export hf CKPT OUT`: an flm checkpoint as a transformers folder, streamed tensor by tensor.

Without xPos the folder is a plain ``GPTNeoXForCausalLM`` (no custom code, see neox.py); with xPos it ships
``configuration_flm.py`` / ``modeling_flm.py`` (remote_code.py; load with ``trust_remote_code=True``). The
tokenizer files and a generation config go with it. A checkpoint in the middle of a growth ramp is refused:
its masks are no part of either architecture (train past the ramp, or export the checkpoint before growth).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from flm.checkpoint import read_config, resolve_checkpoint, verify_manifest
from flm.config import ModelConfig
from flm.data.tokenizer import Tokenizer, load_tokenizer
from flm.errors import FlmError
from flm.growth.ops import check_shapes
from flm.interop import flm101b
from flm.interop.hf_tokenizer import save_hf_tokenizer
from flm.interop.neox import export_recipes, flm_section, neox_config, neox_problem, special_ids
from flm.interop.stream import largest_bytes, staged_folder, write_tensors
from flm.io import atomic_write
from flm.tensorio import TensorSource, open_tensors

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class IOReport:
    out: Path
    bytes_written: int
    seconds: float
    largest_tensor_bytes: int


def open_flm_checkpoint(path: str | os.PathLike[str]) -> tuple[Path, ModelConfig, TensorSource]:
    """A complete, idle (not mid-ramp) flm checkpoint: its folder, model config and tensor reader."""
    folder = resolve_checkpoint(path)
    verify_manifest(folder)
    cfg = read_config(folder / "config.toml").model
    if (folder / "growth.safetensors").is_file():
        raise FlmError(
            f"{folder} is in the middle of a growth ramp (growth.safetensors): its masks are no part of a "
            "transformers model; export a checkpoint after the ramp ends (or the one before growth)"
        )
    src = open_tensors(folder, "model")  # a full checkpoint's safetensors or a sharded one's DCP shards
    if src is None:
        raise FlmError(f"{folder}: no model.safetensors and no model/ shards; not an flm checkpoint")
    check_shapes(cfg, src.shapes, str(folder))
    return folder, cfg, src


def _generation_config(tok: Tokenizer, padded_vocab: int) -> dict[str, object]:
    """Greedy by default, like ``flm generate --temperature 0``; the padding rows of the embedding are never
    sampled (flm samples over the tokenizer's ids only). BOS = EOS: see hf_tokenizer.save_hf_tokenizer."""
    gen: dict[str, object] = {"bos_token_id": tok.eos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
                              "do_sample": False}  # fmt: skip
    if padded_vocab > tok.vocab_size:
        gen["suppress_tokens"] = list(range(tok.vocab_size, padded_vocab))
    return gen


def export_hf(ckpt: str | os.PathLike[str], out: str | os.PathLike[str], dtype: str = "fp32") -> IOReport:
    t0 = time.perf_counter()
    out = Path(out)
    if out.exists():
        raise FlmError(f"output folder {out} already exists; nothing is overwritten: pick a new path")
    folder, cfg, src = open_flm_checkpoint(ckpt)
    try:
        tok = load_tokenizer(folder)
        neox = neox_problem(cfg) is None
        if neox:
            recipes = export_recipes(cfg, src.read, src.shapes, DTYPES[dtype])
            config = neox_config(cfg, tok.special)
        else:  # xPos (or another FLM-only option): the FLM format with its code
            flm101b.check_exportable(cfg, str(folder))
            recipes = flm101b.export_recipes(cfg, src.read, src.shapes, DTYPES[dtype])
            config = flm101b.flm_format_config(cfg) | special_ids(tok.special) | flm_section(cfg)
        config["dtype"] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
        with staged_folder(out) as tmp:
            _, nbytes = write_tensors(tmp / "model.safetensors", recipes)
            atomic_write(tmp / "config.json", json.dumps(config, indent=1))
            gen = _generation_config(tok, cfg.padded_vocab_size)
            atomic_write(tmp / "generation_config.json", json.dumps(gen, indent=1))
            save_hf_tokenizer(tok, tmp, cfg.max_seq_len)
            if not neox:
                flm101b.write_code(tmp)
    finally:
        src.close()
    return IOReport(out, nbytes, time.perf_counter() - t0, largest_bytes(recipes))
