"""The machine: which device to run on, and how fast its matmuls are (the roof MFU is measured against).

The peak is measured once per machine, not once per process: a measurement taken while other work shares the
cores comes out low, and MFU against it above 1 (seen on a shared machine). So ``machine_peak`` takes the
best of several tries and keeps it in ``$FLM_CACHE_DIR/peak.json`` (default ``~/.cache/flm``), keyed by the
CPU model and thread count (or the GPU's name); later runs on that machine read it. ``FLM_PEAK_FLOPS``
overrides it, ``train.peak_flops`` overrides both. ``MfuWatch`` warns once when MFU comes out above 1."""

from __future__ import annotations

import difflib
import functools
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from flm.errors import FlmError
from flm.io import atomic_write
from flm.log import get_logger

log = get_logger(__name__)

if TYPE_CHECKING:
    import torch

PEAK_ENV = "FLM_PEAK_FLOPS"
CACHE_ENV = "FLM_CACHE_DIR"
TRIES = 3  # measurements of ~0.3 s each; the best is kept


def pick_device(device: str = "auto", local_rank: int = 0, where: str = "--device") -> torch.device:
    """``auto`` = this rank's CUDA device when one is visible, else the CPU; ``cuda`` without a GPU and a
    name torch does not know are one clear error naming ``where`` the value came from."""
    import torch  # not at the top: `flm cost` reads the GPU catalog here without torch
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
    import torch  # not at the top: `flm cost` reads the GPU catalog here without torch
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
    import torch  # not at the top: `flm cost` reads the GPU catalog here without torch
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
    import torch  # not at the top: `flm cost` reads the GPU catalog here without torch
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


# ----- the catalog of GPUs and networks (flm/hardware.toml, plus a user's file) -------------------------------
CATALOG_FILE = Path(__file__).with_name("hardware.toml")
GPU_KEYS = ("peak_tflops", "hbm_gib", "hbm_gbps", "link_gbps", "gpus_per_node", "tdp_watts", "network")
NETWORK_KEYS = ("gbps_per_gpu", "latency_us")


@dataclass(frozen=True)
class Gpu:
    """One GPU model: dense bf16 peak, device memory and its bandwidth, the intra-node link (per direction)."""

    name: str
    peak_tflops: float
    hbm_gib: float
    hbm_gbps: float
    link_gbps: float
    gpus_per_node: int
    tdp_watts: float
    network: str  # the inter-node network it usually comes with
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Network:
    """An inter-node network: the bandwidth each GPU has to other nodes (per direction) and one hop's latency."""

    name: str
    gbps_per_gpu: float
    latency_us: float


def _key(name: str) -> str:
    return name.upper().replace("NVIDIA", "").replace(" ", "-").replace("_", "-").strip("-")


def _positive(table: dict, key: str, where: str) -> float:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise FlmError(f"{where}.{key} = {value!r}: give a positive number")
    return float(value)


@dataclass(frozen=True)
class Catalog:
    gpus: dict[str, Gpu]
    networks: dict[str, Network]

    def find(self, name: str) -> Gpu | None:
        """The GPU called ``name``, or None: its key or an alias ('a800', 'A100-SXM4-80GB'), else a device
        name as nvidia-smi or a vendor writes it ('NVIDIA H100 80GB PCIe'): the entry whose name (or alias) has
        the same first word and all of whose other words are among the device name's ('80' matches '80GB'),
        the most such words winning, so 'H100 80GB PCIe' is H100-PCIE, not H100. The one resolver behind
        `flm cost`, `flm cost --memory` and `flm plan layout`."""
        key = _key(name)
        words = set(key.split("-"))
        best, score = None, -1
        for g in self.gpus.values():
            for n in (g.name, *g.aliases):
                if _key(n) == key:
                    return g
                first, *rest = _key(n).split("-")
                if first == key.split("-")[0] and len(rest) > score and all(
                        w in words or w + "GB" in words for w in rest):
                    best, score = g, len(rest)
        return best

    def gpu(self, name: str, where: str = "--gpu") -> Gpu:
        """``find``, or one error with the closest names."""
        g = self.find(name)
        if g is None:
            raise FlmError(f"{where} = {name!r} is not a known GPU{_did_you_mean(name, list(self.gpus))}; add "
                           "it to a hardware file (--hardware FILE, keys as in flm/hardware.toml)")
        return g

    def network(self, name: str, where: str = "--network") -> Network:
        if name in self.networks:
            return self.networks[name]
        raise FlmError(f"{where} = {name!r} is not a known network{_did_you_mean(name, list(self.networks))}; "
                       "add it to a hardware file (--hardware FILE) with gbps_per_gpu and latency_us")


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name.upper(), [k.upper() for k in known], n=1, cutoff=0.5)
    if close:
        return f"; did you mean {next(k for k in known if k.upper() == close[0])}?"
    return f"; known: {', '.join(known)}"


def _parse(data: dict, source: str, base: Catalog | None) -> Catalog:
    gpus = dict(base.gpus) if base else {}
    networks = dict(base.networks) if base else {}
    for name, t in (data.get("networks") or {}).items():
        where = f"{source}: networks.{name}"
        missing = [k for k in NETWORK_KEYS if k not in t]
        if missing:
            raise FlmError(f"{where} has no {', '.join(missing)}; give both {' and '.join(NETWORK_KEYS)}")
        networks[name] = Network(name, _positive(t, "gbps_per_gpu", where), _positive(t, "latency_us", where))
    for name, t in (data.get("gpus") or {}).items():
        where = f"{source}: gpus.{name}"
        missing = [k for k in GPU_KEYS if k not in t]
        if missing:
            raise FlmError(f"{where} has no {', '.join(missing)}; a GPU needs {', '.join(GPU_KEYS)}")
        if t["network"] not in networks:
            raise FlmError(f"{where}.network = {t['network']!r} is not a network of the catalog"
                           f"{_did_you_mean(str(t['network']), list(networks))}")
        nums = {k: _positive(t, k, where) for k in GPU_KEYS if k != "network"}
        gpus[name] = Gpu(name=name, network=t["network"], aliases=tuple(t.get("aliases", ())),
                         **{k: (int(v) if k == "gpus_per_node" else v) for k, v in nums.items()})
    return Catalog(gpus, networks)


@functools.cache
def _builtin_catalog() -> Catalog:
    """The shipped table, parsed once per process (its entries are frozen; a user file's parse copies them)."""
    return _parse(tomllib.loads(CATALOG_FILE.read_text(encoding="utf-8")), CATALOG_FILE.name, None)


def load_catalog(extra: str | Path | None = None) -> Catalog:
    """flm's GPU and network table, with the entries of the TOML file ``extra`` (if given) added or replacing."""
    catalog = _builtin_catalog()
    if extra is None:
        return catalog
    path = Path(extra)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise FlmError(f"hardware file {path}: {e.strerror or e}; pass a TOML file like flm/hardware.toml") from None
    except tomllib.TOMLDecodeError as e:
        raise FlmError(f"hardware file {path} is not valid TOML: {e}") from None
    return _parse(data, str(path), catalog)
