"""Collective and point-to-point times: NCCL's ring cost model (Thakur et al. 2005; NCCL's "bus bandwidth").

A ring all-reduce of S bytes over n ranks moves 2·(n-1)/n·S bytes through each rank's slowest link in 2·(n-1)
steps; a reduce-scatter or an all-gather moves half of that in n-1 steps. ``bw`` is the achieved bandwidth in
bytes/s (the link's figure times ``LINK_EFFICIENCY``), ``latency`` one step's latency in seconds."""

from __future__ import annotations


def all_reduce(size: float, n: int, bw: float, latency: float) -> float:
    if n <= 1 or size <= 0:
        return 0.0
    return 2 * (n - 1) / n * size / bw + 2 * (n - 1) * latency


def reduce_scatter(size: float, n: int, bw: float, latency: float) -> float:
    """Also an all-gather's time: ``size`` is the whole (unsharded) buffer."""
    if n <= 1 or size <= 0:
        return 0.0
    return (n - 1) / n * size / bw + (n - 1) * latency


all_gather = reduce_scatter


def send(size: float, bw: float, latency: float) -> float:
    return size / bw + latency if size > 0 else 0.0
