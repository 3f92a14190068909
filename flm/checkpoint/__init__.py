"""Checkpoints: the folder format (store) and offline growth of a saved checkpoint, tensor by tensor (grow)."""

from __future__ import annotations

# ruff: noqa: F405 (__all__ names come from the star import below, for type checkers only)
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flm.checkpoint.store import *  # noqa: F403 (the names of __all__, for type checkers)

# These names load on first use (PEP 562), not with the package: a command that only parses its arguments
# here (`flm --help`, `flm checkpoint verify --help`) does not import torch.
__all__ = [
    "CKPT_SUBDIR",
    "MANIFEST",
    "SHARDED_MODEL",
    "SHARDED_OPTIM",
    "incomplete_checkpoints",
    "is_sharded",
    "sharded_shapes",
    "checkpoint_disk_full",
    "staging_folder",
    "CheckpointData",
    "check_state_shapes",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_model",
    "prune_checkpoints",
    "read_config",
    "resolve_checkpoint",
    "save_checkpoint",
    "step_name",
    "verify_manifest",
    "write_manifest",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module("flm.checkpoint.store"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
