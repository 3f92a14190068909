"""MSG growth operators as pure functions: (config, state dict, optimizer state) -> bigger ones + masks.

``grow`` executes a ``GrowthPlan`` (plan.py): each tensor is the old one in the top-left corner and the
muP init of the new width elsewhere; Adam moments are the old ones in the corner and zeros elsewhere, and
a widened tensor keeps its step count (one per tensor in torch's AdamW). New blocks get no optimizer state:
AdamW starts them as a fresh optimizer would, at step 0 with zero moments, so their first updates have the
full bias-corrected size instead of ~0.45x of it (zero moments under an old step count). Function
preservation does not depend on the init: it comes from the masks (``GrowthResult.mask_state``, loaded with
``FLM.load_growth_state``) that start at m = 0.

Random entries are drawn from a generator seeded per tensor (from the seed and the tensor's name), so the
in-memory and the streaming paths give the same bytes, in any order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from flm.config import GrowthConfig, ModelConfig
from flm.errors import FlmError
from flm.growth.plan import GrowthPlan, Init, TensorPlan, make_plan, param_shapes

MOMENTS = ("exp_avg", "exp_avg_sq")
MASK_KEYS = ("hidden_new", "head_new", "ffn_new", "depth_new", "layer_from", "grow_m")


@dataclass
class GrowthResult:
    cfg: ModelConfig
    state_dict: dict[str, Tensor]
    optim_state: dict[str, Tensor] | None  # None: the optimizer restarts (reset_optimizer, or none given)
    mask_state: dict[str, Tensor]
    plan: GrowthPlan


def tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def _complement(old: tuple[int, ...], new: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """Disjoint slices covering ``new`` minus its top-left ``old`` corner."""
    regions = []
    for i, (o, n) in enumerate(zip(old, new)):
        if n > o:
            regions.append(
                tuple(slice(0, s) for s in old[:i]) + (slice(o, n),) + (slice(None),) * (len(new) - i - 1)
            )
    return regions


_CHUNK = 1 << 23  # elements per temporary buffer when filling a strided region (32 MiB in fp32)


def _fill(t: Tensor, init: Init, gen: torch.Generator | None, chunked: bool | None = None) -> None:
    """``chunked``: draw row chunks as for a strided view (default: when ``t`` is one); ``flm.growth.region``
    redraws a strided region of a grown tensor into a buffer of its own, bitwise."""
    if chunked is None:
        chunked = not (t.is_contiguous() or t.ndim == 0)
    if init.std is None:
        t.fill_(init.value)
    elif not chunked:
        t.normal_(0.0, init.std, generator=gen)
    else:  # normal_ on a strided view is ~4x slower than on contiguous memory: draw into a buffer, copy
        rows = max(1, _CHUNK // max(1, t[0].numel()))
        for i in range(0, t.shape[0], rows):
            part = t[i : i + rows]
            part.copy_(
                torch.empty(part.shape, dtype=t.dtype, device=t.device).normal_(0.0, init.std, generator=gen)
            )


def build_tensor(
    tp: TensorPlan, old: Tensor | None, seed: int, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """The grown tensor: ``old`` in the top-left corner, ``tp.init`` elsewhere. An unchanged tensor is
    returned as is (shared with the input, not copied); a new block's copy of one is a copy."""
    if old is not None:
        if old.ndim != len(tp.shape) or any(o > n for o, n in zip(old.shape, tp.shape)):
            raise FlmError(f"{tp.source}: shape {tuple(old.shape)} does not fit in the grown {tp.shape}")
        if tuple(old.shape) == tp.shape:
            return old.clone() if tp.new_param else old
        dtype, device = old.dtype, old.device
    out = torch.empty(tp.shape, dtype=dtype, device=device)
    gen = None
    if tp.init.std is not None:
        gen = torch.Generator(device=out.device)
        gen.manual_seed(tensor_seed(seed, tp.name))
    if old is None:
        _fill(out, tp.init, gen)
        return out
    for region in _complement(tuple(old.shape), tp.shape):
        _fill(out[region], tp.init, gen)
    out[tuple(slice(0, s) for s in old.shape)] = old
    return out


def moment_plan(tp: TensorPlan, kind: str) -> TensorPlan:
    """Adam moment ``kind`` of a grown parameter: old moments in the corner, zeros elsewhere (callers skip
    new blocks' tensors, ``tp.new_param``: they start with no state)."""
    source = None if tp.new_param or tp.source is None else f"{kind}/{tp.source}"
    return TensorPlan(f"{kind}/{tp.name}", tp.shape, source, Init(value=0.0), tp.new_param)


def check_shapes(
    cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]], where: str, moments: bool = False
) -> None:
    """One clear line when tensors do not match ``cfg`` (or a growth ramp is still running)."""
    masks = sorted(k for k in shapes if k.rsplit(".", 1)[-1] in MASK_KEYS)
    if masks:
        raise FlmError(
            f"{where}: holds growth masks ({masks[0]}, ...): a growth ramp is still running; finish it "
            "before growing again (one growth at a time)"
        )
    expected = param_shapes(cfg)
    if moments:
        expected = {f"{k}/{n}": s for n, s in expected.items() for k in MOMENTS}
        extra = sorted(set(shapes) - set(expected))
        missing: list[str] = []  # moments of params that never had a gradient may be absent
    else:
        extra = sorted(set(shapes) - set(expected))
        missing = sorted(set(expected) - set(shapes))
    if missing or extra:
        raise FlmError(
            f"{where}: tensors do not match the model config (missing {missing[:3]}, unexpected "
            f"{extra[:3]}); the config and the weights come from different models"
        )
    for name in sorted(shapes, key=list(expected).index):  # the first mismatch in model order
        shape = shapes[name]
        if tuple(shape) != expected[name]:
            raise FlmError(
                f"{where}: tensor {name} has shape {tuple(shape)} but the config "
                f"(d_model {cfg.d_model}, n_heads {cfg.n_heads}, head_dim {cfg.head_dim}, d_ff {cfg.d_ff}, "
                f"n_layers {cfg.n_layers}) needs {expected[name]}; the config and the weights come from "
                "different models"
            )


def _base_seed(generator: torch.Generator | None, seed: int | None) -> int:
    if seed is not None:
        return seed
    if generator is not None:
        return int(torch.randint(0, 2**62, (), generator=generator))
    return 0


def grow(
    model_cfg: ModelConfig,
    state_dict: Mapping[str, Tensor],
    growth: GrowthConfig,
    optim_state: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> GrowthResult:
    """Grow a model state dict (and its AdamW moments) by ``growth``.

    ``optim_state`` is keyed "exp_avg/<param>", "exp_avg_sq/<param>"; the step count is not touched
    (MSG keeps it for old and widened tensors; ``GrowthPlan.carried_steps`` renames per-tensor counts). New
    blocks' tensors have no moments in the result: they start fresh (step 0). With ``growth.reset_optimizer``
    the result has no optimizer state. Random entries come from ``seed`` (or one draw of ``generator``;
    default 0).
    """
    plan = make_plan(model_cfg, growth)
    check_shapes(model_cfg, {k: tuple(v.shape) for k, v in state_dict.items()}, "state dict")
    base = _base_seed(generator, seed)
    new_state = {
        tp.name: build_tensor(tp, None if tp.source is None else state_dict[tp.source], base)
        for tp in plan.tensors
    }
    new_optim: dict[str, Tensor] | None = None
    if optim_state is not None and not growth.reset_optimizer:
        check_shapes(model_cfg, {k: tuple(v.shape) for k, v in optim_state.items()}, "optimizer state", True)
        dtype = next(iter(optim_state.values())).dtype if optim_state else torch.float32
        new_optim = {}
        for tp in plan.tensors:
            if tp.new_param:
                continue
            for kind in MOMENTS:
                mp = moment_plan(tp, kind)
                old = optim_state.get(mp.source) if mp.source is not None else None
                device = new_state[tp.name].device
                new_optim[mp.name] = build_tensor(
                    mp if old is not None else _no_source(mp), old, base, dtype, device
                )
    return GrowthResult(plan.new, new_state, new_optim, plan.mask_state(), plan)


def _no_source(tp: TensorPlan) -> TensorPlan:
    return TensorPlan(tp.name, tp.shape, None, tp.init, tp.new_param)
