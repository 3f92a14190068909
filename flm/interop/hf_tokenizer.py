"""An flm tokenizer as the files transformers' AutoTokenizer loads (tokenizer.json, tokenizer_config.json,
special_tokens_map.json), and back: the token ids, the special tokens and the label tokens stay the same.

flm's own ``tokenizer_spec.json`` (and ``tokenizer.tiktoken`` for tiktoken encodings) goes along, so an
import of an export gets the very same tokenizer. A tiktoken encoding becomes a byte-level BPE tokenizer.json
(ranks -> vocabulary and merges, the encoding's split pattern, every special token at its own id).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, pre_tokenizers
from tokenizers import Tokenizer as HFBackend
from tokenizers.models import BPE

from flm.data.tokenizer import (
    HF_FILE,
    SPEC_FILE,
    SPECIAL_TOKENS,
    HFTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    load_tokenizer,
)
from flm.errors import FlmError
from flm.io import atomic_write


def _token_strings(tok: Tokenizer) -> dict[str, str]:
    """Registry name -> the token string this tokenizer uses for it."""
    if isinstance(tok, HFTokenizer):
        return {name: str(tok.backend.id_to_token(i)) for name, i in tok.special.items()}
    assert isinstance(tok, TiktokenTokenizer)
    by_id = {i: s for s, i in tok.all_special.items()}
    return {name: by_id[i] for name, i in tok.special.items()}


def _tiktoken_backend(tok: TiktokenTokenizer) -> HFBackend:
    """A byte-level BPE tokenizer.json equal to the tiktoken encoding (specials at their tiktoken ids)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter  # heavy optional dependency

    with tempfile.TemporaryDirectory() as d:
        tok.save(d)
        vocab, merges = TikTokenConverter(pattern=tok.pat).extract_vocab_merges_from_model(
            str(Path(d) / "tokenizer.tiktoken")
        )
    vocab.update(tok.all_special)
    backend = HFBackend(BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(tok.pat), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in tok.all_special])
    return backend


def hf_backend(tok: Tokenizer) -> HFBackend:
    """The tokenizer as a ``tokenizers.Tokenizer`` (what tokenizer.json holds)."""
    if isinstance(tok, HFTokenizer):
        return tok.backend
    assert isinstance(tok, TiktokenTokenizer)
    return _tiktoken_backend(tok)


def save_hf_tokenizer(tok: Tokenizer, folder: Path, max_len: int) -> None:
    """Write the transformers tokenizer files (and flm's own) into ``folder``."""
    tok.save(folder)  # tokenizer_spec.json (+ tokenizer.json or tokenizer.tiktoken): exact round trip
    if isinstance(tok, HFTokenizer):
        tok.backend.encode_special_tokens = False  # transformers users expect "<|endoftext|>" to be one token
        try:
            atomic_write(folder / HF_FILE, tok.backend.to_str())
        finally:
            tok.backend.encode_special_tokens = True
    else:
        atomic_write(folder / HF_FILE, hf_backend(tok).to_str())
    names = _token_strings(tok)
    # BOS = EOS: flm ends every training document with EOS and never writes BOS, so a text is conditioned
    # on EOS (as FLM-101B's released config has it, bos_token_id = eos_token_id); flm's own <|bos|> and the
    # label tokens stay special tokens.
    others = [names["bos"], names["label_pos"], names["label_neg"]]
    special_map = {"bos_token": names["eos"], "eos_token": names["eos"], "pad_token": names["pad"],
                   "additional_special_tokens": others}  # fmt: skip
    config = special_map | {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    atomic_write(folder / "tokenizer_config.json", json.dumps(config, indent=1))
    atomic_write(folder / "special_tokens_map.json", json.dumps(special_map, indent=1))


def load_hf_tokenizer(folder: Path, override: Path | None) -> Tokenizer:
    """The tokenizer of a transformers folder (flm's spec when an flm export carries it), or ``override``."""
    if override is not None:
        if not override.exists():
            raise FlmError(f"--tokenizer {override}: not found; give a tokenizer.json or a folder with one")
        return load_tokenizer(override)
    if (folder / SPEC_FILE).is_file() or (folder / HF_FILE).is_file():
        return load_tokenizer(folder)
    raise FlmError(
        f"{folder} has no tokenizer.json; pass --tokenizer PATH (a tokenizer.json) so the checkpoint can "
        f"encode text (flm adds its special tokens {', '.join(SPECIAL_TOKENS.values())} where missing)"
    )
