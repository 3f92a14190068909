"""What the spawned ranks run: one suite per layout (process start-up is most of a test's time on a busy
2-core machine). Rank 0 writes the results with torch.save for the tests (in the pytest process) to compare
against one process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from flm.config import ParallelConfig, TrainConfig
from flm.distributed.init import materialize, meta_model
from flm.distributed.mesh import ParallelDims
from flm.distributed.parallelize import parallelize
from flm.distributed.tensor_parallel import growth_state
from flm.loss import linear_cross_entropy

from ._common import RAMP, SEED, batches, full_state, grown, ramp_data, readout_case, tiny_cfg, train


@dataclass(frozen=True)
class Variant:
    """One training run: sequence parallel, activation checkpointing, fused (else logits + loss_parallel)."""

    sp: bool = False
    ac: str = "none"
    fused: bool = False

    @property
    def name(self) -> str:
        return f"sp={self.sp},ac={self.ac},fused={self.fused}"


def suite(rank: int, world: int, tmp: Path, tp: int, variants: list[Variant],
          growths: list[tuple[bool, list[str]]]) -> None:
    """Under tp x dp (dp = world / tp): each training variant from a meta-device init; the growths (kinds
    of GROWTHS, with or without sequence parallel); the vocabulary-parallel readout loss."""
    cfg = tiny_cfg()
    dims = ParallelDims.from_config(ParallelConfig(tp=tp), world)
    mesh = dims.build_mesh("cpu")
    out: dict[str, object] = {}
    for v in variants:
        vdims = ParallelDims.from_config(ParallelConfig(tp=tp, sequence_parallel=v.sp), world)
        vdims.check_model(cfg, seq_len=batches(cfg)[0][0].shape[1])
        model = parallelize(meta_model(cfg), vdims, mesh, TrainConfig(activation_checkpointing=v.ac))
        materialize(model, "cpu", SEED)
        init = full_state(model)
        losses = train(model, batches(cfg), vdims, mesh, v.fused)
        out[v.name] = {"init": init, "final": full_state(model), "losses": losses}
    for sp, kinds in growths:
        gdims = ParallelDims.from_config(ParallelConfig(tp=tp, sequence_parallel=sp), world)
        out |= {f"grow {kind},sp={sp}": _grow(gdims, mesh, kind) for kind in kinds}
    out["readout"] = _readout(mesh["tp"])
    if rank == 0:
        torch.save(out, tmp / "result.pt")


def _grow(dims: ParallelDims, mesh: DeviceMesh, kind: str) -> dict[str, object]:
    """A growth loaded into a tensor-parallel model (weights, then masks set after parallelization): logits at
    m = 0 (and the old model's), the full masks back, the local ones, the losses of the mask ramp."""
    old, res = grown(kind)
    dims.check_model(res.cfg)
    model = materialize(parallelize(meta_model(res.cfg), dims, mesh, TrainConfig()), "cpu", 0)
    set_model_state_dict(model, res.state_dict, options=StateDictOptions(full_state_dict=True))
    model.load_growth_state(res.mask_state)
    x, _ = batches(res.cfg, steps=1)[0]
    with torch.no_grad():
        logits = model(x).full_tensor()
        before = old(x)
    masks = growth_state(model, mesh["tp"])
    local = [b.attn.head_new for b in model.blocks.values()] + [b.mlp.ffn_new for b in model.blocks.values()]
    return {"logits": logits, "old_logits": before, "masks": masks, "local_masks": local,
            "ramp": train(model, ramp_data(res.cfg), dims, mesh, fused=True, ramp=RAMP)}


def _readout(tp_mesh: DeviceMesh) -> dict[str, torch.Tensor]:
    """The fused readout loss with the weight sharded over the vocabulary: loss and gathered gradients."""
    h, w, y, wts = readout_case()
    h = h.requires_grad_()
    w_dt = distribute_tensor(w, tp_mesh, [Shard(0)], src_data_rank=None).requires_grad_()
    loss = linear_cross_entropy(h, w_dt, y, wts, chunk=64)
    loss.backward()
    assert isinstance(w_dt.grad, DTensor)
    return {"loss": loss.detach(), "dh": h.grad, "dw": w_dt.grad.full_tensor()}
