"""The performance model's parts against their closed forms, and its direction in the obvious cases."""

from __future__ import annotations

import dataclasses
import math

import pytest

from flm.config import ModelConfig
from flm.errors import FlmError
from flm.flops import flops_per_token
from flm.hardware import load_catalog
from flm.scaling.perf import comm
from flm.scaling.perf.stage_layout import shape_of
from flm.scaling.perf.step import (
    CONSTANTS,
    Constants,
    Layout,
    Shape,
    bubble_fraction,
    check_layout,
    gemm_efficiency,
    step_time,
)

CAT = load_catalog()
A100, NET = CAT.gpu("A100"), CAT.network("ib-hdr-8x200")
GPT = Shape(d_model=8192, n_layers=48, n_heads=64, head_dim=128, d_ff=32768, vocab=51200, seq_len=2048)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64])
def test_ring_all_reduce_is_the_closed_form(n):
    size, bw, lat = 3.0e9, 2.0e11, 5e-6
    want = 0.0 if n == 1 else 2 * (n - 1) / n * size / bw + 2 * (n - 1) * lat
    assert comm.all_reduce(size, n, bw, lat) == pytest.approx(want)
    # a reduce-scatter then an all-gather move what one all-reduce moves
    assert comm.reduce_scatter(size, n, bw, lat) + comm.all_gather(size, n, bw, lat) == pytest.approx(want)


@pytest.mark.parametrize("schedule,v", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("interleaved", 4)])
@pytest.mark.parametrize("pp,micro", [(2, 1), (4, 2), (8, 1)])
def test_bubble_is_megatrons_formula(schedule, v, pp, micro):
    lay = Layout(tp=8, pp=pp, dp=4, microbatch=micro, schedule=schedule, virtual=v)
    batch = 256
    b = step_time(GPT, lay, batch, A100, NET)
    m = batch // (4 * micro)
    want = (pp - 1) / (v * m)  # Narayanan et al. 2021: (p-1)/m, interleaved (p-1)/(v m)
    assert bubble_fraction(lay, m) == pytest.approx(want)
    assert b.bubble / (b.compute + b.recompute + b.tp_comm + b.pp_comm) == pytest.approx(want)


def test_more_microbatches_shrink_the_bubble():
    shares = [step_time(GPT, Layout(8, 8, 4, microbatch=mb), 512, A100, NET).shares()["bubble"] for mb in (8, 4, 2, 1)]
    assert shares == sorted(shares, reverse=True) and shares[-1] < shares[0] / 4


def test_tensor_parallelism_on_a_slower_link_costs_more():
    slow = dataclasses.replace(A100, link_gbps=A100.link_gbps / 4)
    for tp in (2, 4, 8):
        fast_b, slow_b = (step_time(GPT, Layout(tp, 1, 64 // tp), 512, g, NET) for g in (A100, slow))
        assert slow_b.tp_comm > fast_b.tp_comm and slow_b.step > fast_b.step
    # and more tensor parallelism spends a larger share of the step talking
    shares = [step_time(GPT, Layout(tp, 1, 64 // tp), 512, slow, NET).shares()["tp_comm"] for tp in (2, 4, 8)]
    assert shares == sorted(shares)


def test_tp_across_nodes_uses_the_network():
    slow = dataclasses.replace(NET, gbps_per_gpu=NET.gbps_per_gpu / 8)
    inside, inside_slow = (step_time(GPT, Layout(8, 1, 8), 512, A100, n) for n in (NET, slow))
    across, across_slow = (step_time(GPT, Layout(16, 1, 4), 512, A100, n) for n in (NET, slow))
    assert inside_slow.tp_comm == inside.tp_comm  # one node: NVLink only
    assert across_slow.tp_comm > 4 * across.tp_comm  # two nodes: the ring crosses the network
    assert across.tp_comm / across.step > inside.tp_comm / inside.step


def test_a_group_with_k_ranks_per_node_gets_k_gpus_of_network():
    """NCCL's ring over a data-parallel group with k ranks in each node crosses each node once per channel
    (one per NIC), so the group gets k GPUs' share of the node's network: tp 2 (4 ranks of each DP group per
    node) moves 4x the bytes per GPU of tp 8 (1 per node) in about the same time."""
    two, eight = (step_time(GPT, Layout(tp, 1, 256 // tp), 1024, A100, NET) for tp in (2, 8))
    assert two.dp_comm_total == pytest.approx(eight.dp_comm_total, rel=0.05)
    lone = dataclasses.replace(A100, gpus_per_node=1)  # one GPU per node: each rank on its own NIC
    assert step_time(GPT, Layout(2, 1, 128), 1024, lone, NET).dp_comm_total > 3.5 * two.dp_comm_total


def test_recompute_adds_one_forward_and_counts_as_hardware_flops():
    none, full = (step_time(GPT, Layout(8, 1, 8, recompute=r), 512, A100, NET) for r in (0.0, 1.0))
    assert full.model_flops == none.model_flops
    assert full.hardware_flops / none.hardware_flops == pytest.approx(4 / 3, rel=0.02)  # blocks only: ~4/3
    assert full.step > none.step and full.recompute == pytest.approx(none.compute / 3, rel=0.15)


def test_model_flops_match_flm_flops_for_an_flm_shape():
    m = ModelConfig(vocab_size=50000, d_model=1024, n_layers=12, n_heads=16, d_ff=4096, max_seq_len=2048)
    assert shape_of(m, 2048).model_flops_per_token() == pytest.approx(flops_per_token(m, 2048))


def test_big_gemms_run_near_the_peak_fraction_and_small_ones_slower():
    assert gemm_efficiency(16384, 16384, 16384) == pytest.approx(CONSTANTS.gemm_peak_fraction, rel=0.02)
    assert gemm_efficiency(2048, 128, 2048) < 0.7 * gemm_efficiency(2048, 2048, 2048)


def test_a_layout_that_does_not_divide_is_one_error():
    with pytest.raises(FlmError, match="tp = 3 does not divide n_heads"):
        check_layout(GPT, Layout(3, 1, 1), 64)
    with pytest.raises(FlmError, match="does not split into dp = 5"):
        check_layout(GPT, Layout(1, 1, 5), 64)


def test_the_constants_are_plain_global_numbers():
    """Nothing in the model is keyed by a model or a paper: the constants are scalars, and neither the layout
    nor the shape carries a name or an efficiency."""
    for f in dataclasses.fields(Constants):
        assert isinstance(getattr(CONSTANTS, f.name), float) and math.isfinite(getattr(CONSTANTS, f.name))
    for cls in (Layout, Shape):
        names = {f.name for f in dataclasses.fields(cls)}
        assert not names & {"name", "model", "paper", "source", "efficiency", "mfu", "tflops"}
