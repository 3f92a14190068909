"""Text generation: sampling from an FLM with temperature and top-k over its KV cache (sample), and the
`flm generate` command (cli)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flm.generate.sample import generate as generate

# The names below load on first use (PEP 562), not with the package: a command that only parses its
# arguments here (`flm --help`, the generate command's own parser) does not import torch.
_FROM = {
    **dict.fromkeys(["generate"], "flm.generate.sample"),
}
__all__ = sorted(_FROM)


def __getattr__(name: str) -> Any:
    if name in _FROM:
        return getattr(import_module(_FROM[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
