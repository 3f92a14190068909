"""Literature growth baselines, run beside MSG on the same footing: pure functions (config, state dict) ->
(grown config, grown state dict). Chosen per growth by ``grow.method``; docs/growth.md#baselines.

- ``gstack`` (G_stack, Du et al. 2024): target layer i is old layer i mod L (the whole stack repeated);
  embedding and final LayerNorm copied. Not function-preserving.
- ``hyperclone`` (HyperCloning, Samragh et al. 2024): every width axis grows by an integer factor and
  ``W' = W.repeat(k_out, k_in) / k_in``: the residual stream is the old one repeated, LayerNorm statistics of a
  repeated vector are the old ones, so the logits are the old ones exactly. Optional symmetric noise.
- ``net2net`` (Net2WiderNet / bert2BERT FPI): new FFN units, heads and hidden dims replicate random old ones
  and the weights reading them are divided by the replication count; new blocks have zero output
  projections (attention out, FFN down), so they are the identity on the residual stream. Exact for FFN,
  heads and depth; hidden width only up to LayerNorm statistics (a replicated vector's mean and variance
  are count-weighted).

The tied readout: the logits are ``readout_mult · ln_f(h) · E'ᵀ``, and E' repeats E's columns (the input needs
exact copies), so a replicated dim would count once per copy. The final LayerNorm's gain and bias are divided
by the replication count (times old/new readout multiplier, which is 1 with ``grow.readout = "keep"``), so the
readout sums the copies back to the old logits, as staged training (Shen et al. 2022) halves ln_f.

None of them has masks; the optimizer starts fresh (as G_stack's and HyperCloning's code do), so these
functions touch no optimizer state. They work in memory (``flm run`` loads the previous stage's checkpoint
whole); MSG streams.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from flm.config import GrowthConfig, ModelConfig
from flm.errors import FlmError
from flm.growth.ops import check_shapes, tensor_seed
from flm.growth.plan import BLOCK_PREFIX, copy_sources, init_for, layer_layout
from flm.stages import grow_shape

# Per tensor suffix: the width axis of each dimension ("d" hidden, "a" attention, "f" FFN, "-" vocab), and the
# axis that reads a grown input (divided by the replication count), or None.
_AXES: dict[str, tuple[str, int | None]] = {
    "tok_emb.weight": ("-d", None),
    "ln1.weight": ("d", None), "ln1.bias": ("d", None), "ln2.weight": ("d", None), "ln2.bias": ("d", None),
    "attn.q.weight": ("ad", 1), "attn.k.weight": ("ad", 1), "attn.v.weight": ("ad", 1),
    "attn.q.bias": ("a", None), "attn.k.bias": ("a", None), "attn.v.bias": ("a", None),
    "attn.o.weight": ("da", 1), "attn.o.bias": ("d", None),
    "mlp.up.weight": ("fd", 1), "mlp.up.bias": ("f", None),
    "mlp.down.weight": ("df", 1), "mlp.down.bias": ("d", None),
    "ln_f.weight": ("d", None), "ln_f.bias": ("d", None),
}
Grown = tuple[ModelConfig, dict[str, Tensor]]  # the grown config and state dict
_ZEROED = ("attn.o.weight", "attn.o.bias", "mlp.down.weight", "mlp.down.bias")  # net2net: new blocks add nothing


@dataclass(frozen=True)
class WidthMap:
    """For each width axis ("d", "a", "f"): the old index every new index copies."""

    index: dict[str, Tensor]

    def counts(self, axis: str) -> Tensor:
        """How many new indices copy each new index's source, per new index."""
        idx = self.index[axis]
        return torch.bincount(idx)[idx]


def _suffix(name: str) -> str:
    return name.split(".", 2)[2] if name.startswith(BLOCK_PREFIX) else name


def _head_axis(heads: Tensor, head_dim: int) -> Tensor:
    """The attention axis' index map from the heads': head h copies head heads[h], dim by dim."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def cloned_map(old: ModelConfig, new: ModelConfig) -> WidthMap:
    """HyperCloning's: new index i copies old index i mod old size (``Tensor.repeat``)."""
    return WidthMap({
        "d": torch.arange(new.d_model) % old.d_model,
        "f": torch.arange(new.d_ff) % old.d_ff,  # type: ignore[operator]
        "a": _head_axis(torch.arange(new.n_heads) % old.n_heads, old.head_dim),  # type: ignore[arg-type]
    })


def random_map(old: ModelConfig, new: ModelConfig, seed: int) -> WidthMap:
    """Net2Net's: old indices stay, each new one copies an old one drawn uniformly."""
    gen = torch.Generator().manual_seed(tensor_seed(seed, "net2net/width"))

    def extend(o: int, n: int) -> Tensor:
        return torch.cat([torch.arange(o), torch.randint(0, o, (n - o,), generator=gen)])

    heads = extend(old.n_heads, new.n_heads)
    return WidthMap({
        "d": extend(old.d_model, new.d_model),
        "f": extend(old.d_ff, new.d_ff),  # type: ignore[arg-type]
        "a": _head_axis(heads, old.head_dim),  # type: ignore[arg-type]
    })


def widen(name: str, t: Tensor, wmap: WidthMap, readout_ratio: float = 1.0) -> Tensor:
    """One tensor grown by ``wmap``: every width axis gathered, the axis that reads a grown input divided by
    its replication count; ``ln_f`` divided by the hidden count times ``readout_ratio`` (module docstring)."""
    key = _suffix(name)
    axes, reads = _AXES[key]
    out = t
    for dim, axis in enumerate(axes):
        if axis in wmap.index:
            out = out.index_select(dim, wmap.index[axis].to(t.device))
    if reads is not None:
        count = wmap.counts(axes[reads]).to(out.device, out.dtype)
        out = out / count.reshape([-1 if dim == reads else 1 for dim in range(out.ndim)])
    if key.startswith("ln_f."):
        out = out * (readout_ratio / wmap.counts("d").to(out.device, out.dtype))
    return out


def _readout_ratio(old: ModelConfig, new: ModelConfig) -> float:
    return (old.output_mult / old.width_mult) / (new.output_mult / new.width_mult)


def _grown(old: ModelConfig, state: Mapping[str, Tensor], growth: GrowthConfig, method: str) -> ModelConfig:
    if growth.method != method:
        raise FlmError(f"grow.method is {growth.method!r}, not {method!r}; call flm.growth.baselines.grow_baseline")
    check_shapes(old, {k: tuple(v.shape) for k, v in state.items()}, "state dict")
    return grow_shape(growth, old)  # refuses what the method cannot reach (flm.stages._check_method)


def gstack(old: ModelConfig, state: Mapping[str, Tensor], growth: GrowthConfig) -> Grown:
    """G_stack: layer i of the grown model is a copy of old layer i mod L; everything else copied."""
    new = _grown(old, state, growth, "gstack")
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        if not name.startswith(BLOCK_PREFIX):
            out[name] = t.clone()
    for i in range(new.n_layers):
        src = f"{BLOCK_PREFIX}{i % old.n_layers}."
        for name, t in state.items():
            if name.startswith(src):
                out[f"{BLOCK_PREFIX}{i}.{name[len(src):]}"] = t.clone()
    return new, out


def symmetric_noise(name: str, t: Tensor, old_in: int, snr_db: float, seed: int) -> Tensor:
    """HyperCloning's noise on a cloned matrix whose input is the old one repeated: +N on one input copy, -N on
    the next, so each pair of copies still sums to the old weights and the function is kept (an odd copy out
    stays clean). N ~ N(0, σ²), σ = std(t) / 10^(snr_db / 20)."""
    copies = t.shape[1] // old_in
    gen = torch.Generator().manual_seed(tensor_seed(seed, f"hyperclone/{name}"))
    std = float(t.std()) / 10 ** (snr_db / 20)
    out = t.clone()
    for c in range(0, copies - 1, 2):
        noise = torch.randn(t.shape[0], old_in, generator=gen).to(t.dtype) * std
        out[:, c * old_in : (c + 1) * old_in] += noise
        out[:, (c + 1) * old_in : (c + 2) * old_in] -= noise
    return out


def hyperclone(
    old: ModelConfig, state: Mapping[str, Tensor], growth: GrowthConfig, *, snr_db: float | None = None, seed: int = 0
) -> Grown:
    """HyperCloning: symmetric duplication of the hidden, attention (heads, head_dim kept) and FFN axes by
    integer factors; the logits are the old ones. ``snr_db``: add symmetric noise at this signal-to-noise
    ratio (off by default; the paper finds symmetry breaks by itself in training)."""
    new = _grown(old, state, growth, "hyperclone")
    wmap = cloned_map(old, new)
    ratio = _readout_ratio(old, new)
    out = {name: widen(name, t, wmap, ratio) for name, t in state.items()}
    if snr_db is not None:
        old_in = {"ad": old.d_model, "fd": old.d_model, "da": old.attn_dim, "df": old.d_ff}
        for name, t in out.items():
            axes, reads = _AXES[_suffix(name)]
            if reads is not None and t.shape[1] > old_in[axes]:
                out[name] = symmetric_noise(name, t, old_in[axes], snr_db, seed)
    return new, out


def net2net(
    old: ModelConfig, state: Mapping[str, Tensor], growth: GrowthConfig, *, seed: int = 0
) -> Grown:
    """Net2Net / bert2BERT FPI: width by random replication (outgoing weights divided by the count), depth by
    new blocks placed as ``grow.depth_position`` says, started as ``grow.depth_init`` says (a copy of an old
    block, or the μP init) with zero attention-out and FFN-down projections: the identity on the residual."""
    new = _grown(old, state, growth, "net2net")
    wmap = random_map(old, new, seed)
    ratio = _readout_ratio(old, new)
    wide = {name: widen(name, t, wmap, ratio) for name, t in state.items()}
    layout = layer_layout(old.n_layers, growth, new.n_layers)
    copies = copy_sources(layout, growth, old.n_layers)
    out = {name: t for name, t in wide.items() if not name.startswith(BLOCK_PREFIX)}
    for i, src in enumerate(layout):
        for key in _AXES:
            if key.startswith(("ln1", "ln2", "attn", "mlp")):
                out[f"{BLOCK_PREFIX}{i}.{key}"] = _block_tensor(new, wide, i, key, src, copies.get(i), seed)
    return new, out


def _block_tensor(
    new: ModelConfig, wide: Mapping[str, Tensor], i: int, key: str, src: int | None, copy: int | None, seed: int
) -> Tensor:
    """Tensor ``key`` of grown block ``i``: old block ``src`` widened, or a new block (a copy of old block ``copy``,
    or the μP init when None) with zero output projections."""
    if src is not None:
        return wide[f"{BLOCK_PREFIX}{src}.{key}"]
    ref = wide[f"{BLOCK_PREFIX}0.{key}"]
    if key in _ZEROED:
        return torch.zeros_like(ref)
    if copy is not None:
        return wide[f"{BLOCK_PREFIX}{copy}.{key}"].clone()
    name = f"{BLOCK_PREFIX}{i}.{key}"
    init = init_for(name, new)
    if init.std is None:
        return torch.full_like(ref, init.value)
    gen = torch.Generator().manual_seed(tensor_seed(seed, name))
    return torch.randn(ref.shape, generator=gen).to(ref.dtype).mul_(init.std)


def grow_baseline(
    old: ModelConfig, state: Mapping[str, Tensor], growth: GrowthConfig, seed: int = 0
) -> Grown:
    """The grown (config, state dict) of ``growth.method`` (not "msg": that is ``flm.growth.grow``)."""
    if growth.method == "gstack":
        return gstack(old, state, growth)
    if growth.method == "hyperclone":
        return hyperclone(old, state, growth, seed=seed)
    if growth.method == "net2net":
        return net2net(old, state, growth, seed=seed)
    raise FlmError(f"grow.method = {growth.method!r} is MSG, not a baseline; grow it with flm.growth.grow")
