"""Checkpoints: the folder format (store) and offline growth of a saved checkpoint, tensor by tensor (grow)."""

from flm.checkpoint.store import (
    CKPT_SUBDIR,
    MANIFEST,
    CheckpointData,
    check_state_shapes,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model,
    prune_checkpoints,
    read_config,
    resolve_checkpoint,
    save_checkpoint,
    step_name,
    verify_manifest,
    write_manifest,
)

__all__ = [
    "CKPT_SUBDIR",
    "MANIFEST",
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
