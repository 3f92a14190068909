"""Fixtures: a tiny flm checkpoint folder and a tiny Hugging Face model folder, built in the test."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from flm.eval.iq.words import CATEGORIES, NOUNS, PEOPLE, PLACES

TEXTS = [
    " ".join(random.Random(i).choices(NOUNS + PEOPLE + PLACES + list(CATEGORIES["color"]), k=40)) + "."
    for i in range(200)
] + ["Question: what is it?\nAnswer: a word, 1, 2, 3.\n\nInput: x y z\nOutput: x z"] * 20


def _tokenizer():
    from flm.data.tokenizer import train_bpe

    return train_bpe(TEXTS, 400)


@pytest.fixture(scope="session")
def flm_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint folder (model.safetensors, config.toml, tokenizer, manifest) of a random tiny FLM."""
    from flm.checkpoint import CheckpointData, save_checkpoint
    from flm.config import config_from_dict
    from flm.model import FLM

    tok = _tokenizer()
    cfg = config_from_dict(
        {
            "model": {
                "vocab_size": tok.vocab_size,
                "d_model": 32,
                "n_layers": 2,
                "n_heads": 2,
                "max_seq_len": 96,
            }
        }
    )
    torch.manual_seed(0)
    model = FLM(cfg.model)
    with torch.no_grad():  # sharper than the init, so scores and greedy tokens vary with the input
        model.tok_emb.weight.mul_(8.0)
    data = CheckpointData(
        model=model.state_dict(),
        optim_tensors={},
        optim_meta={"step": 0},
        trainer={"step": 0},
        growth={},
        rng={},
    )
    return save_checkpoint(tmp_path_factory.mktemp("run") / "step_00000000", data, cfg, tok)


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory) -> Path:
    """A Hugging Face folder: a random tiny LlamaForCausalLM and a byte-level BPE tokenizer."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf")
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer().backend,
        bos_token="<|bos|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )
    tok.save_pretrained(folder)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(30.0)
    model.save_pretrained(folder)
    return folder
