"""GEMM efficiency measured on a GPU, for `flm plan layout --calibrate FILE`.

``python -m flm.scaling.perf.calibrate --out FILE`` (scripts/gpu_check.sh runs it) times bf16 GEMMs of the
shapes the model uses (tokens x width x width, the FFN's, and small ones) and writes
``{"gpu": name, "gemms": [{"m", "n", "k", "tflops"}, ...]}``. ``load_calibration`` fits the model's two GEMM
constants (peak fraction and half-speed dimension) to those points against the catalog's peak of that GPU;
everything else stays global. UNTESTED on a GPU so far: the fit is tested on synthetic points."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import torch
from scipy.optimize import curve_fit

from flm.errors import FlmError
from flm.io import atomic_write
from flm.scaling.perf.step import CONSTANTS, Constants

SHAPES = [(t, n, k) for t in (1024, 2048, 8192) for n, k in ((4096, 4096), (16384, 4096), (4096, 16384),
                                                              (1024, 4096), (10240, 2560), (128, 2048))]


def fit_gemm(points: list[dict], peak_tflops: float, base: Constants = CONSTANTS) -> Constants:
    """``base`` with gemm_peak_fraction and gemm_half_dim fitted (least squares on log efficiency)."""
    if len(points) < 3:
        raise FlmError(f"calibration has {len(points)} GEMM points; measure at least 3 shapes")
    try:
        dims = [(float(p["m"]), float(p["n"]), float(p["k"])) for p in points]
        eff = [float(p["tflops"]) / peak_tflops for p in points]
    except (KeyError, TypeError, ValueError):
        raise FlmError("calibration gemms need m, n, k and tflops in every entry") from None

    def model(i, frac, half):
        return [math.log(frac * math.prod(x / (x + half) for x in dims[int(j)])) for j in i]

    (frac, half), _ = curve_fit(model, list(range(len(dims))), [math.log(e) for e in eff], p0=(0.8, 64.0),
                                bounds=((0.05, 1.0), (1.0, 4096.0)))
    return replace(base, gemm_peak_fraction=float(frac), gemm_half_dim=float(half))


def load_calibration(path: str | Path, peak_tflops: float, base: Constants = CONSTANTS) -> Constants:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise FlmError(f"--calibrate {path}: {e.strerror or e}; write it with scripts/gpu_check.sh") from None
    except ValueError:
        raise FlmError(f"--calibrate {path} is not JSON; write it with scripts/gpu_check.sh") from None
    if not isinstance(data, dict) or not isinstance(data.get("gemms"), list):
        raise FlmError(f"--calibrate {path} has no 'gemms' list; write it with scripts/gpu_check.sh")
    return fit_gemm(data["gemms"], peak_tflops, base)


def measure(out: Path, repeats: int = 20) -> dict:  # pragma: no cover - needs a GPU
    if not torch.cuda.is_available():
        raise FlmError("calibration needs a CUDA device")
    rows = []
    for m, n, k in SHAPES:
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            a @ b
        end.record()
        torch.cuda.synchronize()
        secs = start.elapsed_time(end) / 1e3 / repeats
        rows.append({"m": m, "n": n, "k": k, "tflops": 2 * m * n * k / secs / 1e12})
    data = {"gpu": torch.cuda.get_device_name(0), "gemms": rows}
    atomic_write(out, json.dumps(data, indent=1) + "\n")
    return data


if __name__ == "__main__":  # pragma: no cover - run by scripts/gpu_check.sh
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, type=Path)
    print(json.dumps(measure(ap.parse_args().out)))
