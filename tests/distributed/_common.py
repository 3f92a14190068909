"""A tiny model, its batches, and a reference training step shared by the single-process reference (in the
pytest process) and the spawned ranks: tokens -> logits -> cross-entropy (vocabulary-parallel under tensor
parallelism) -> AdamW with the muP groups of flm.mup."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from flm.config import GrowthConfig, ModelConfig
from flm.distributed.clip import clip_grad_norm_
from flm.distributed.init import materialize, meta_model
from flm.distributed.mesh import ParallelDims
from flm.growth.ops import GrowthResult, grow
from flm.model import FLM
from flm.mup import param_groups

SEED = 1234
STEPS = 5
BATCH = 4
SEQ = 16
CLIP = 0.5  # below the first steps' gradient norm (~0.9): clipping acts
ONE = ParallelDims(pp=1, dp=1, tp=1, world_size=1)


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=200, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=SEQ, mup_base_width=16)
    return ModelConfig(**(base | kw))


def batches(cfg: ModelConfig, steps: int = STEPS, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """``steps`` global batches (BATCH x SEQ) of random tokens and their next-token targets."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        t = torch.randint(0, cfg.vocab_size, (BATCH, SEQ + 1), generator=g)
        out.append((t[:, :-1], t[:, 1:]))
    return out


def loss_of(model: FLM, x: Tensor, y: Tensor, fused: bool = False) -> Tensor:
    """Mean next-token cross-entropy: the fused readout (vocabulary-parallel under TP), or logits then
    ``F.cross_entropy`` (call inside ``loss_context``, the backward too)."""
    if fused:
        return model(x, targets=y)
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def loss_context(model: FLM):
    """``loss_parallel`` when the logits are vocabulary-sharded DTensors (a tensor-parallel model)."""
    return loss_parallel() if isinstance(model.tok_emb.weight, DTensor) else nullcontext()


def value(t: Tensor) -> float:
    return float((t.full_tensor() if isinstance(t, DTensor) else t).detach())


def train(model: FLM, data: list[tuple[Tensor, Tensor]], dims: ParallelDims = ONE, mesh: DeviceMesh | None = None,
          fused: bool = False, clip: float = CLIP, ramp: list[float] | None = None) -> list[float]:
    """AdamW steps with gradient clipping on ``data``; a data-parallel rank takes its contiguous share of each
    global batch (FSDP2 averages the gradients over dp, so the step is the one of the whole batch). ``ramp``:
    the growth mask value m of each step. Returns the losses of the global batches."""
    opt = torch.optim.AdamW(param_groups(model, lr=1e-2, weight_decay=0.1), betas=(0.9, 0.95))
    dp_rank = mesh["dp"].get_local_rank() if mesh is not None else 0
    share = BATCH // dims.dp
    losses = []
    for i, (x, y) in enumerate(data):
        if ramp is not None:
            model.set_mask_value(ramp[i])
        xs, ys = x[dp_rank * share : (dp_rank + 1) * share], y[dp_rank * share : (dp_rank + 1) * share]
        with loss_context(model):
            loss = loss_of(model, xs, ys, fused)
            loss.backward()
        clip_grad_norm_(model.parameters(), clip, dims)
        opt.step()
        opt.zero_grad()
        loss_sum = torch.tensor(value(loss))
        if dims.dp > 1:  # every dp rank's mean over an equal share
            torch.distributed.all_reduce(loss_sum, group=mesh["dp"].get_group())
        losses.append(float(loss_sum) / dims.dp)
    return losses


def full_state(model: FLM) -> dict[str, Tensor]:
    """Full (gathered) weights, plain tensors on every rank: what a checkpoint of the model holds."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().clone() for k, v in state.items()}  # plain parameters come back by reference


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


GROWTHS = {  # MSG growth of tiny_cfg() (d 32, 4 heads of 8, d_ff 64, 2 layers) in each dimension
    "width": GrowthConfig(d_model=64),  # heads follow the width: 8 heads; muP readout multiplier interpolates
    "heads": GrowthConfig(n_heads=8),
    "ffn": GrowthConfig(d_ff=128),
    "depth": GrowthConfig(n_layers=4, depth_position="interleave"),
}
RAMP = [0.0, 0.25, 0.5, 0.75]


def grown(kind: str) -> tuple[FLM, GrowthResult]:
    """The tiny model (meta init, SEED) and its growth ``kind`` (state dict and masks at m = 0)."""
    old = materialize(meta_model(tiny_cfg()), "cpu", SEED)
    return old, grow(old.cfg, old.state_dict(), GROWTHS[kind], seed=7)


def ramp_data(cfg: ModelConfig) -> list[tuple[Tensor, Tensor]]:
    """One batch, repeated for every ramp step: the loss must fall."""
    return batches(cfg, steps=1, seed=3) * len(RAMP)


def readout_case() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """h (N, d), a readout weight (V, d), targets (some in the vocabulary padding) and per-token weights (some
    zero, as masked tokens are), for the fused readout loss; chunks of 64 rows cover it in several pieces."""
    g = torch.Generator().manual_seed(5)
    n, v, d = 300, 256, 16
    h = torch.randn(n, d, generator=g)
    w = torch.randn(v, d, generator=g) * 0.5
    y = torch.randint(0, v, (n,), generator=g)
    wts = torch.rand(n, generator=g) * (torch.rand(n, generator=g) > 0.2) / n
    return h, w, y, wts
