"""The machine: which device to run on, and how fast its matmuls are (the roof MFU is measured against).

The peak is measured once per machine, not once per process: a measurement taken while other work shares the
cores comes out low, and MFU against it above 1 (seen on a shared machine). So ``machine_peak`` takes the
best of several tries and keeps it in ``$FLM_CACHE_DIR/peak.json`` (default ``~/.cache/flm``), keyed by the
CPU model and thread count (or the GPU's name); later runs on that machine read it. ``FLM_PEAK_FLOPS``
overrides it, ``train.peak_flops`` overrides both. ``MfuWatch`` warns once when MFU comes out above 1."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from flm.errors import FlmError
from flm.io import atomic_write
from flm.log import get_logger

log = get_logger(__name__)

PEAK_ENV = "FLM_PEAK_FLOPS"
CACHE_ENV = "FLM_CACHE_DIR"
TRIES = 3  # measurements of ~0.3 s each; the best is kept


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


@dataclass(frozen=True)
class Peak:
    flops: float  # FLOP/s of one device
    source: str  # where the figure came from, for messages


def cache_file() -> Path:
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flm"
    return Path(root) / "peak.json"


def machine_key(device: torch.device) -> str:
    """What the peak depends on: the GPU's name, or the CPU model and the threads torch uses."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass  # not Linux
    return f"cpu:{model}:{torch.get_num_threads()} threads"


def _read_cache(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}  # none yet, or damaged: measured again and rewritten


def _env_peak() -> Peak | None:
    raw = os.environ.get(PEAK_ENV)
    if not raw:
        return None
    try:
        flops = float(raw)
    except ValueError:
        flops = 0.0
    if not flops > 0:
        raise FlmError(f"{PEAK_ENV} = {raw!r} is not a positive number of FLOP/s; e.g. {PEAK_ENV}=1.2e12, or unset it")
    return Peak(flops, PEAK_ENV)


_PEAKS: dict[str, Peak] = {}


def machine_peak(device: torch.device, tries: int = TRIES) -> Peak:
    """The device's matmul peak: ``FLM_PEAK_FLOPS``, else this machine's cached figure, else the best of
    ``tries`` measurements (then cached; an unwritable cache only costs the next run a measurement). Measure
    before any seeding: it draws random numbers."""
    device = torch.device(device)
    env = _env_peak()
    if env is not None:
        return env
    key, path = machine_key(device), cache_file()
    if key in _PEAKS:
        return _PEAKS[key]
    cached = _read_cache(path).get(key)
    if cached and cached > 0:
        peak = Peak(cached, f"cached in {path} for {key}")
    else:
        best = max(measure_matmul_peak(device, seconds=0.3) for _ in range(tries))
        peak = Peak(best, f"measured, best of {tries}, cached in {path}")
        try:
            atomic_write(path, json.dumps(_read_cache(path) | {key: best}, indent=1, sort_keys=True) + "\n")
        except OSError:
            pass
    _PEAKS[key] = peak
    return peak


class MfuWatch:
    """Model FLOPs utilization of a throughput against ``peak`` FLOP/s; the first value above 1 (the peak is
    too low for this machine) prints one warning saying where the peak came from and how to set it."""

    def __init__(self, peak: float, source: str, enabled: bool = True) -> None:
        self.peak, self.source, self.enabled, self.warned = peak, source, enabled, False

    def __call__(self, flops_per_s: float) -> float:
        mfu = flops_per_s / self.peak
        if mfu > 1 and not self.warned:
            self.warned = True
            if self.enabled:
                log.warning(f"warning: MFU {mfu:.2f} is above 1: the peak {self.peak:.3g} FLOP/s ({self.source}) is "
                            f"too low for this machine; set train.peak_flops or {PEAK_ENV}, or delete {cache_file()} "
                            "to measure it again")
        return mfu
