"""What the memory test measures on a ParallelModel (in one process, or on each spawned gloo rank): the bytes
of this rank's parameter shards, of their gradients after a backward, of AdamW's state after a step."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from flm.config import ModelConfig, ParallelConfig, TrainConfig
from flm.distributed.env import DistEnv
from flm.distributed.parallel_model import ParallelModel
from flm.scaling.memory import rank_tensors

# odd sizes, so FSDP2's chunks are uneven and the pipeline split too (3 blocks on 2 stages)
CFG = ModelConfig(vocab_size=200, d_model=33, n_layers=3, n_heads=4, head_dim=8, d_ff=70, max_seq_len=16)
LAYOUTS = [{"tp": 2, "dp": 2}, {"pp": 2, "dp": 2, "microbatches": 2}, {"dp": 4}]


def _bytes(t: Tensor | None) -> int:
    if t is None:
        return 0
    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def measure(model: ParallelModel, rows: int = 2, seq: int = 16) -> dict[str, int]:
    """Train one step on random tokens; the bytes of params, grads and optimizer state this rank holds."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, CFG.vocab_size, (rows, seq), generator=g)
    model.forward_backward([(x, x, torch.ones(rows, seq))], torch.tensor(float(rows * seq)))
    for part in model.parts.values():  # gathered (unsharded) parameters back to their shards
        for module in part.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
    params = [p for part in model.parts.values() for p in part.parameters()]
    opt = torch.optim.AdamW(model.param_groups(1e-3, 0.1), fused=True)
    out = {"params": sum(_bytes(p) for p in params), "grads": sum(_bytes(p.grad) for p in params)}
    opt.step()
    out["optimizer"] = sum(_bytes(v) for st in opt.state.values() for v in st.values() if isinstance(v, Tensor))
    return out


def expected(env: DistEnv) -> dict[str, int]:
    """The planner's bytes for this rank (its pp and dp coordinates)."""
    dims, mesh = env.dims, env.mesh
    pp_rank = mesh["pp"].get_local_rank() if mesh is not None else 0
    held = rank_tensors(CFG, dims, pp_rank)
    n = held.numel(dims.dp, env.dp_rank)
    return {"params": 4 * n, "grads": 4 * n, "optimizer": 8 * n + 4 * len(held.tensors)}


def layouts(rank: int, world: int, tmp: Path) -> None:
    """Every layout of LAYOUTS on these ranks: measured and planned bytes per rank, to tmp/memory-RANK.json."""
    env = DistEnv(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
    results = []
    for layout in LAYOUTS:
        env_l = env.with_layout(ParallelConfig(**layout))
        model = ParallelModel(CFG, env_l, TrainConfig(), seed=0)
        results.append({"layout": layout, "measured": measure(model), "expected": expected(env_l)})
    (tmp / f"memory-{rank}.json").write_text(json.dumps(results))
