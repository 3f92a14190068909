"""One rank's shard of a grown tensor, built from only the part of the old tensor that lands in it.

A grown tensor is the old tensor in its top-left corner and random (or constant) entries elsewhere, drawn
region by region from the tensor's own generator (``flm.growth.ops.build_tensor``). A rank that keeps the
box ``region`` of it reads ``old[region ∩ corner]`` only, and redraws the random regions in the same order
as the whole-tensor build, keeping the part that falls in its box: so its shard is bitwise the slice of the
tensor ``build_tensor`` gives, while the reads shrink with the number of ranks. (The draws themselves are
not sharded: a generator's stream cannot be entered in the middle.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flm.growth.ops import _complement, _fill, tensor_seed
from flm.growth.plan import TensorPlan
from flm.tensorio import Region, region_shape, whole

ReadOld = Callable[[Region], Tensor]  # old[region], for a region inside the old tensor


def _overlap(a: Region, b: Region) -> Region | None:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return out if all(s.start < s.stop for s in out) else None


def _within(inner: Region, outer: Region) -> Region:
    """``inner`` in the coordinates of the box ``outer`` (which contains it)."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def _normalise(region: tuple[slice, ...], shape: tuple[int, ...]) -> Region:
    return tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, shape))


def build_region(tp: TensorPlan, old_shape: tuple[int, ...] | None, read_old: ReadOld | None, region: Region,
                 seed: int, dtype: torch.dtype) -> Tensor:
    """``build_tensor(tp, old, seed, dtype)[region]`` without the whole old tensor: ``read_old`` is asked for
    the part of the old corner inside ``region`` (at most once)."""
    if old_shape is not None and tuple(old_shape) == tp.shape:
        assert read_old is not None
        return read_old(region)
    out = torch.empty(region_shape(region), dtype=dtype)
    pieces = [whole(tp.shape)] if old_shape is None else [_normalise(r, tp.shape) for r in
                                                          _complement(tuple(old_shape), tp.shape)]
    hits = [_overlap(p, region) for p in pieces]
    last = max((i for i, h in enumerate(hits) if h is not None), default=-1)
    gen = None
    if tp.init.std is not None and last >= 0:
        gen = torch.Generator().manual_seed(tensor_seed(seed, tp.name))
    for piece, hit in zip(pieces[: last + 1], hits):
        if tp.init.std is None:  # constants: no stream to follow, fill the overlap alone
            if hit is not None:
                out[_within(hit, region)].fill_(tp.init.value)
            continue
        strided = not torch.empty(tp.shape, device="meta")[piece].is_contiguous()
        buf = torch.empty(region_shape(piece), dtype=dtype)
        _fill(buf, tp.init, gen, chunked=strided and buf.ndim > 0)
        if hit is not None:
            out[_within(hit, region)] = buf[_within(hit, piece)]
        del buf
    if old_shape is not None:
        corner = _overlap(whole(tuple(old_shape)), region)
        if corner is not None:
            assert read_old is not None
            out[_within(corner, region)] = read_old(corner)
    return out
