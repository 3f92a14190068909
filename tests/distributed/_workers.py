"""What the spawned ranks run. Each writes its results with torch.save for the test (in the pytest process) to
compare against one process."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from flm.config import ParallelConfig, TrainConfig
from flm.distributed.init import materialize, meta_model
from flm.distributed.mesh import ParallelDims
from flm.distributed.parallelize import parallelize
from flm.distributed.tensor_parallel import growth_state

from ._common import RAMP, SEED, batches, full_state, grown, ramp_data, tiny_cfg, train


def train_layout(rank: int, world: int, tmp: Path, tp: int, dp: int, sp: bool, ac: str, fused: bool) -> None:
    """Meta-device init under the layout, then the reference training steps; rank 0 saves the initial and the
    final full weights and the losses."""
    cfg = tiny_cfg()
    dims = ParallelDims.from_config(ParallelConfig(tp=tp, dp=dp, sequence_parallel=sp), world)
    dims.check_model(cfg)
    mesh = dims.build_mesh("cpu")
    model = parallelize(meta_model(cfg), dims, mesh, TrainConfig(activation_checkpointing=ac))
    materialize(model, "cpu", SEED)
    init = full_state(model)
    losses = train(model, batches(cfg), dims, mesh, fused)
    final = full_state(model)
    if rank == 0:
        torch.save({"init": init, "final": final, "losses": losses}, tmp / "result.pt")


def grow_tp(rank: int, world: int, tmp: Path, sp: bool, kinds: list[str]) -> None:
    """Each growth of ``kinds`` loaded into a tp2 model (weights, then masks set after parallelization):
    logits at m = 0, the full masks back, and the losses of the mask ramp."""
    dims = ParallelDims.from_config(ParallelConfig(tp=world, sequence_parallel=sp), world)
    mesh = dims.build_mesh("cpu")
    out = {}
    for kind in kinds:
        old, res = grown(kind)
        dims.check_model(res.cfg)
        model = materialize(parallelize(meta_model(res.cfg), dims, mesh, TrainConfig()), "cpu", 0)
        set_model_state_dict(model, res.state_dict, options=StateDictOptions(full_state_dict=True))
        model.load_growth_state(res.mask_state)
        x, _ = batches(res.cfg, steps=1)[0]
        with torch.no_grad():
            logits = model(x).full_tensor()[..., : res.cfg.vocab_size]
            before = old(x)[..., : res.cfg.vocab_size]
        masks = growth_state(model, mesh["tp"])
        losses = train(model, ramp_data(res.cfg), dims, mesh, fused=True, ramp=RAMP)
        out[kind] = {"logits": logits, "old_logits": before, "masks": masks, "ramp": losses,
                     "local_heads": [b.attn.head_new for b in model.blocks.values()]}
    if rank == 0:
        torch.save(out, tmp / "result.pt")
