"""Building this rank's part of the model under a layout, without ever holding the whole model in memory.

The order matters: the FLM is built on the meta device (shapes, no storage), cut into pipeline stages (each
rank keeps its own, pp > 1), parallelized (tensor parallel -> activation checkpointing -> compile -> FSDP2:
each wraps what the one before left), and only then materialised, each rank filling just its shards: from
the per-tensor-seeded initial values (bitwise the same full weights in one process and under any layout), or
from a full state (a checkpoint, a grown model; ``flm.distributed.init.materialize``).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from flm.config import ModelConfig, TrainConfig
from flm.distributed.env import DistEnv
from flm.distributed.init import materialize, meta_model
from flm.distributed.parallelize import parallelize
from flm.distributed.pipeline import Pipeline, split_model
from flm.model import FLM


def build_parts(cfg: ModelConfig, env: DistEnv, train: TrainConfig, *, seed: int, bf16: bool,
                state: Mapping[str, Tensor] | None = None) -> tuple[dict[int, FLM], Pipeline | None]:
    """(pipeline stage index -> this rank's FLM module, the pipeline schedule or None without pp)."""
    dims, mesh = env.dims, env.mesh
    model = meta_model(cfg)
    if dims.pp > 1:  # a rank keeps its stage's blocks only, under their one-process names
        assert mesh is not None
        parts = split_model(model, mesh["pp"].get_local_rank(), dims.pp, dims.pp_schedule)
    else:
        parts = {0: model}
    for part in parts.values():
        parallelize(part, dims, mesh, train, bf16)
        materialize(part, env.device, seed, state)  # after parallelize: each rank allocates only its shards
    if dims.pp == 1:
        return parts, None
    assert mesh is not None
    return parts, Pipeline(parts, mesh, dims.pp_schedule, dims.microbatches, env.device)
