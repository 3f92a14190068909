"""Fixtures: tiny random flm checkpoints and tiny GPT-NeoX folders, built locally (no hub)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from flm.checkpoint import CheckpointData, load_model, save_checkpoint
from flm.config import config_from_dict
from flm.data.tokenizer import HFTokenizer, train_bpe
from flm.generate import generate
from flm.model import FLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TEXTS = [f"the {w} of {v} is {n} and the cat sat on the mat {n * 7}." for n in range(60)
         for w, v in (("king", "spain"), ("river", "stone"))]  # fmt: skip


@pytest.fixture(scope="session")
def tok() -> HFTokenizer:
    return train_bpe(TEXTS, 300)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Every weight and bias random (zero biases or unit LayerNorms would hide mapping mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm = any(k in name for k in ("ln", "layernorm", "layer_norm")) and name.endswith("weight")
            base = 1.0 if norm else 0.0
            p.copy_(base + std * torch.randn(p.shape, generator=gen))


@pytest.fixture
def make_ckpt(tmp_path: Path, tok: HFTokenizer) -> Callable[..., Path]:
    """make_ckpt(**model_options) -> a checkpoint folder of a random tiny FLM."""

    def make(name: str = "ckpt", seed: int = 0, **model) -> Path:
        spec = {"vocab_size": tok.vocab_size, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 64,
                "xpos": False} | model  # fmt: skip
        cfg = config_from_dict({"model": spec})
        flm = FLM(cfg.model)
        randomize(flm, seed)
        data = CheckpointData(flm.state_dict(), {}, {"step": 0}, {"step": 0}, {}, {})
        return save_checkpoint(tmp_path / name, data, cfg, tok)

    return make


@pytest.fixture
def make_neox(tmp_path: Path, tok: HFTokenizer) -> Callable[..., Path]:
    """make_neox(**config) -> a GPTNeoXForCausalLM(config).save_pretrained folder with a tokenizer.json."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    def make(name: str = "neox", seed: int = 0, **over) -> Path:
        spec = dict(vocab_size=320, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=80, max_position_embeddings=64, use_parallel_residual=False, rotary_pct=1.0,
                    rotary_emb_base=10000, tie_word_embeddings=True, hidden_act="gelu") | over  # fmt: skip
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**spec))
        randomize(model, seed)
        model.tie_weights()
        out = tmp_path / name
        model.save_pretrained(out)
        tok.backend.encode_special_tokens = False
        tok.backend.save(str(out / "tokenizer.json"))
        tok.backend.encode_special_tokens = True
        return out

    return make


def assert_same_greedy(ckpt, hf, prompt: list[int], n: int, vocab_size: int) -> None:
    """Greedy generation with the KV cache gives the same tokens in flm (checkpoint ``ckpt``) and transformers."""
    model, _, _ = load_model(ckpt)
    ours = generate(model, prompt, n, temperature=0, vocab_size=vocab_size, use_cache=True)
    # the exported generation config is greedy and never picks the embedding's padding rows, as flm does
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=n, use_cache=True)[0].tolist()
    assert len(ours) == len(prompt) + n and ours == theirs
