"""The machine: which device to run on, and how fast its matmuls are (the roof MFU is measured against)."""

from __future__ import annotations

import time

import torch

from flm.errors import FlmError


def pick_device(device: str = "auto", local_rank: int = 0, where: str = "--device") -> torch.device:
    """``auto`` = this rank's CUDA device when one is visible, else the CPU; ``cuda`` without a GPU and a
    name torch does not know are one clear error naming ``where`` the value came from."""
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FlmError(f"{where} = {device!r} but no CUDA device is visible; use cpu")
    if device == "cuda":
        return torch.device("cuda", local_rank)
    try:
        return torch.device(device)
    except RuntimeError:
        raise FlmError(f"{where} = {device!r} is not a device; use auto, cpu or cuda") from None


def measure_matmul_peak(device: torch.device | str = "cpu", n: int = 1024, seconds: float = 0.5) -> float:
    """Best observed FLOP/s of an n x n fp32 matmul (bf16 on CUDA): the roof MFU is measured against."""
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        n = max(n, 8192)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


_PEAKS: dict[str, float] = {}


def device_peak(device: torch.device) -> float:
    """The measured matmul peak, once per process (measured before any seeding: it draws random numbers)."""
    key = str(device)
    if key not in _PEAKS:
        _PEAKS[key] = measure_matmul_peak(device)
    return _PEAKS[key]
