"""What the spawned ranks run for the sharded-checkpoint tests: the next stage built in its own layout straight
from the previous stage's sharded checkpoint (``grown_tensors`` -> ``ParallelModel``), counting the bytes each
rank reads of the old tensors (rank 0 gathers the result for the pytest process to compare with ``grow``); a
checkpoint verified by ranks that split the hashing."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flm.checkpoint.manager import verify_checkpoint
from flm.checkpoint.model_state import ModelState
from flm.config import GrowthConfig, ModelConfig, ParallelConfig, TrainConfig
from flm.distributed.env import DistEnv
from flm.distributed.parallel_model import ParallelModel
from flm.errors import FlmError
from flm.growth.offline import grown_tensors
from flm.tensorio import DcpReader, region_shape


def grow_into_layouts(rank: int, world: int, tmp: Path, folder: str, model: dict, growth: dict,
                      layouts: dict[str, dict], seed: int) -> None:
    """For each layout: tmp/<name>.pt (rank 0: the gathered weights and moments) and tmp/<name>-<rank>.json
    (the bytes this rank read of the old checkpoint)."""
    read = {"bytes": 0, "whole": 0}
    region_read = DcpReader.read_region

    def counting(self, name, region):  # what this rank asks of the old checkpoint
        out = region_read(self, name, region)
        read["bytes"] += torch.Size(region_shape(region)).numel() * out.element_size()
        return out

    def whole(self, name):
        read["whole"] += 1
        raise AssertionError(f"a rank read the whole tensor {name}")

    DcpReader.read_region, DcpReader.read = counting, whole  # type: ignore[method-assign]
    env = DistEnv(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
    for name, layout in layouts.items():
        read["bytes"] = 0
        plan, weights, moments = grown_tensors(Path(folder), ModelConfig(**model), GrowthConfig(**growth), seed)
        assert moments is not None
        pm = ParallelModel(plan.new, env.with_layout(ParallelConfig(**layout)), TrainConfig(), seed=0, state=weights)
        opt = torch.optim.AdamW(pm.param_groups(1e-3, 0.1), fused=True)
        ModelState(pm).load_optim_state(opt, moments, step=3)
        state, optim = ModelState(pm).full_model_state(), ModelState(pm).full_optim_state(opt)
        if rank == 0:
            assert optim is not None
            torch.save({"model": state, "optim": optim[0]}, tmp / f"{name}.pt")
        (tmp / f"{name}-{rank}.json").write_text(json.dumps(read))


def verify_on_ranks(rank: int, world: int, tmp: Path, folder: str) -> None:
    """``verify_checkpoint`` on every rank: tmp/verify-<rank>.txt holds the error it raised ("" if none)."""
    env = DistEnv(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
    try:
        verify_checkpoint(env, Path(folder))
        msg = ""
    except FlmError as e:
        msg = str(e)
    (tmp / f"verify-{rank}.txt").write_text(msg)
