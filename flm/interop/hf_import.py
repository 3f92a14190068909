"""`flm import hf MODEL OUT`: a local transformers folder as an flm checkpoint, streamed tensor by tensor.

Two families: GPT-NeoX (``model_type = "gpt_neox"``, neox.py; the variants flm cannot represent are refused
with one line naming the difference) and the released FLM-101B format (``model_type = "flm"``, flm101b.py).
The checkpoint is a fresh one (store.py's layout: fp32 weights, no optimizer moments, step 0) that
``flm train --init``, ``flm grow``, ``flm generate`` and ``flm eval`` accept.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flm.config import ModelConfig, config_from_dict, config_to_dict, model_config_from_dict, save_config
from flm.data.tokenizer import Tokenizer
from flm.errors import FlmError
from flm.growth.ops import check_shapes
from flm.interop import flm101b
from flm.interop.hf_export import IOReport
from flm.interop.hf_source import HFWeights, read_hf_config
from flm.interop.hf_tokenizer import load_hf_tokenizer
from flm.interop.neox import FLM_KEY, flm_config_from_neox, import_recipes, q_fold, readout_fold
from flm.interop.stream import Recipe, largest_bytes, refuse_existing, staged_folder, write_manifest, write_tensors
from flm.io import atomic_write

_LM_HEADS = ("lm_head.weight", "embed_out.weight")


def exported_config(hf: dict, base: ModelConfig, rows: int, where: str) -> ModelConfig | None:
    """The flm model config an flm export carries in config.json (None for other folders)."""
    section = hf.get(FLM_KEY)
    if not isinstance(section, dict) or "model" not in section:
        return None
    cfg = model_config_from_dict(section["model"], f"{where}/config.json, its flm section")
    if cfg.shape() != base.shape() or cfg.padded_vocab_size != rows:
        raise FlmError(f"{where}: its flm section disagrees with the rest of config.json; the folder was edited")
    return cfg


def _neox_plan(hf: dict, weights: HFWeights, tok: Tokenizer, where: str) -> tuple[ModelConfig, list[Recipe]]:
    has_head = any(n in weights.shapes for n in _LM_HEADS)
    base = flm_config_from_neox(hf, has_head, where)
    rows = weights.shapes.get("gpt_neox.embed_in.weight", (0,))[0]
    cfg = exported_config(hf, base, rows, where)
    if cfg is not None:  # an flm export: its own config, and the folds to undo
        return cfg, import_recipes(cfg, weights.read, weights.shapes, (q_fold(cfg), readout_fold(cfg)))
    cfg = base.model_copy(update={"vocab_size": max(rows, tok.vocab_size)})
    return cfg, import_recipes(cfg, weights.read, weights.shapes, (1.0, 1.0))


def _flm_plan(hf: dict, weights: HFWeights, tok: Tokenizer, where: str) -> tuple[ModelConfig, list[Recipe]]:
    prefix, rows = flm101b.find_prefix(weights, where)
    base = flm101b.flm_config_from_101b(hf, max(rows, tok.vocab_size), where)
    cfg = exported_config(hf, base, rows, where) or base
    return cfg, flm101b.import_recipes(cfg, weights, prefix)


@contextmanager
def _weights_match(folder: Path) -> Iterator[None]:
    """A config.json that does not describe its weights (edited by hand, or from another model) shows when a
    tensor is missing or has another shape: one line, not a traceback."""
    try:
        yield
    except KeyError as e:
        raise FlmError(f"{folder}: config.json does not match the weights: they hold no tensor {e}; restore the "
                       "config.json that came with them") from None
    except ValueError as e:
        raise FlmError(f"{folder}: config.json does not match the weights ({e}); restore the config.json that came "
                       "with them") from None


def import_hf(
    model: str | os.PathLike[str], out: str | os.PathLike[str], tokenizer: str | os.PathLike[str] | None = None
) -> IOReport:
    t0 = time.perf_counter()
    folder, out = Path(model), Path(out)
    refuse_existing(out, "output folder")
    hf = read_hf_config(folder)
    kind = hf.get("model_type")
    if kind not in ("gpt_neox", "flm"):
        archs = ", ".join(hf.get("architectures") or []) or "unknown"
        raise FlmError(
            f"{folder}: unsupported architecture model_type={kind!r} ({archs}); flm imports GPT-NeoX "
            "(gpt_neox) and the FLM-101B format (flm)"
        )
    weights = HFWeights(folder)
    try:
        tok = load_hf_tokenizer(folder, Path(tokenizer) if tokenizer is not None else None)
        with _weights_match(folder):
            if kind == "gpt_neox":
                cfg, recipes = _neox_plan(hf, weights, tok, str(folder))
            else:
                cfg, recipes = _flm_plan(hf, weights, tok, str(folder))
        check_shapes(cfg, {r.name: r.shape for r in recipes}, f"{folder} (config.json and weights)")
        if tok.vocab_size > cfg.padded_vocab_size:
            raise FlmError(
                f"{folder}: the tokenizer has {tok.vocab_size} tokens, more than the model's "
                f"{cfg.padded_vocab_size} embedding rows; pass the model's own tokenizer (--tokenizer)"
            )
        own = {"kind": "file", "path": str(out.resolve())}  # its own tokenizer (saved beside it): trains on as is
        run = config_from_dict({"name": f"import-{folder.name}", "model": config_to_dict(cfg),
                                "data": {"tokenizer": own}}, where="imported config")
        with staged_folder(out) as tmp, _weights_match(folder):
            sha, nbytes = write_tensors(tmp / "model.safetensors", recipes)
            atomic_write(tmp / "optim.json", json.dumps({"step": 0}, indent=1))
            trainer = {"step": 0, "tokens": 0, "flops": 0.0, "ramp": None, "imported_from": str(folder.resolve())}
            atomic_write(tmp / "trainer.json", json.dumps(trainer, indent=1))
            save_config(run, tmp / "config.toml")
            tok.save(tmp)
            known = {"model.safetensors": {"bytes": nbytes, "sha256": sha}}  # hashed while written, not re-read
            write_manifest(tmp, known)
    finally:
        weights.close()
    return IOReport(out, nbytes, time.perf_counter() - t0, largest_bytes(recipes))
