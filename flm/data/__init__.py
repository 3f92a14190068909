"""Data: tokenizers, corpus -> token shards (``prepare_data``), and the deterministic resumable loader."""

from flm.data.loader import TokenLoader
from flm.data.prepare import PreparedData, load_prepared, prepare_data
from flm.data.tokenizer import Tokenizer, build_tokenizer, check_vocab, load_tokenizer

__all__ = [
    "PreparedData",
    "TokenLoader",
    "Tokenizer",
    "build_tokenizer",
    "check_vocab",
    "load_prepared",
    "load_tokenizer",
    "prepare_data",
]
