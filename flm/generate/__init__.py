"""Text generation: sampling from an FLM with temperature and top-k over its KV cache (sample), and the
`flm generate` command (cli)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flm.generate.sample import generate as generate

__all__ = ["generate"]


def __getattr__(name: str) -> Any:
    """``generate`` loads on first use (PEP 562): `flm generate --help` parses without torch."""
    if name == "generate":
        return import_module("flm.generate.sample").generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
