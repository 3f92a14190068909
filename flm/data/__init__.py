"""Data: tokenizers, corpus -> token shards (``prepare_data``), and the deterministic resumable loader."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flm.data.loader import TokenLoader as TokenLoader
    from flm.data.prepare import PreparedData as PreparedData
    from flm.data.prepare import load_prepared as load_prepared
    from flm.data.prepare import prepare_data as prepare_data
    from flm.data.tokenizer import Tokenizer as Tokenizer
    from flm.data.tokenizer import build_tokenizer as build_tokenizer
    from flm.data.tokenizer import check_vocab as check_vocab
    from flm.data.tokenizer import load_tokenizer as load_tokenizer

# The names below load on first use (PEP 562), not with the package: a command that only parses its
# arguments here (`flm --help`, the data command's own parser) does not import torch.
_FROM = {
    **dict.fromkeys(["TokenLoader"], "flm.data.loader"),
    **dict.fromkeys(["PreparedData", "load_prepared", "prepare_data"], "flm.data.prepare"),
    **dict.fromkeys(["Tokenizer", "build_tokenizer", "check_vocab", "load_tokenizer"], "flm.data.tokenizer"),
}
__all__ = sorted(_FROM)


def __getattr__(name: str) -> Any:
    if name in _FROM:
        return getattr(import_module(_FROM[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
