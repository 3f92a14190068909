"""A rank's box of a grown tensor, built from only the old slice inside it, is bitwise the whole build's."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

from flm.growth.ops import build_tensor
from flm.growth.plan import Init, TensorPlan
from flm.growth.region import build_region
from flm.tensorio import DcpReader, SafetensorsReader

CASES = [((6, 4), (12, 8)), ((6, 4), (6, 10)), ((5,), (9,)), ((3, 4), (3, 4)), (None, (7, 5)), ((2, 3, 4), (4, 3, 6))]


def _boxes(shape: tuple[int, ...]):
    """Boxes that cut every dimension in 1, 2 or 3 uneven pieces (as tp and FSDP2 shards do)."""
    cuts = [sorted({0, n // 3, n // 2, n}) for n in shape]
    per_dim = [[slice(a, b) for a, b in zip(c, c[1:]) if a < b] for c in cuts]
    return list(itertools.product(*per_dim))


@pytest.mark.parametrize("old_shape,new_shape", CASES)
@pytest.mark.parametrize("init", [Init(std=0.02), Init(value=0.0)])
def test_every_box_equals_the_slice_of_the_whole_build(old_shape, new_shape, init, monkeypatch) -> None:
    monkeypatch.setattr("flm.growth.ops._CHUNK", 8)  # strided regions drawn in several chunks, as for big tensors
    old = torch.randn(old_shape) if old_shape else None
    tp = TensorPlan("blocks.0.w", new_shape, "src" if old_shape else None, init, False)
    full = build_tensor(tp, old, seed=3)
    reads: list[tuple[slice, ...]] = []

    def read_old(region):
        reads.append(region)
        return old[region].clone()

    for box in _boxes(new_shape):
        got = build_region(tp, old_shape, read_old if old_shape else None, box, 3, torch.float32)
        assert torch.equal(got, full[box]), box
    for region in reads:  # never more of the old tensor than a box holds
        assert all(s.stop - s.start <= n for s, n in zip(region, new_shape))


def test_safetensors_region_reads_only_its_rows(tmp_path) -> None:
    t = torch.arange(60, dtype=torch.float32).reshape(10, 6)
    save_file({"t": t, "v": torch.arange(5.0)}, str(tmp_path / "x.safetensors"))
    r = SafetensorsReader(tmp_path / "x.safetensors")
    try:
        assert torch.equal(r.read_region("t", (slice(3, 7), slice(2, 5))), t[3:7, 2:5])
        assert torch.equal(r.read_region("v", (slice(1, 4),)), torch.arange(5.0)[1:4])
        assert r.read_region("t", (slice(4, 4), slice(0, 6))).shape == (0, 6)
    finally:
        r.close()


def test_dcp_region_reads_the_overlapping_pieces(tmp_path) -> None:
    t = torch.arange(60, dtype=torch.float32).reshape(10, 6)
    dcp.save({"t": t}, checkpoint_id=tmp_path / "ck", no_dist=True)
    r = DcpReader(tmp_path / "ck")
    assert torch.equal(r.read_region("t", (slice(3, 7), slice(2, 5))), t[3:7, 2:5])
    assert torch.equal(r.read_region("t", (slice(0, 10), slice(0, 6))), t)
