"""`flm plan layout --calibrate FILE`: the GEMM constants fitted from measured points (synthetic here: no GPU)."""

from __future__ import annotations

import json

import pytest

from flm.errors import FlmError
from flm.scaling.perf.calibrate import SHAPES, fit_gemm, load_calibration
from flm.scaling.perf.step import gemm_efficiency, with_constants


def test_the_fit_recovers_the_constants_that_made_the_points(tmp_path):
    truth = with_constants(gemm_peak_fraction=0.7, gemm_half_dim=100.0)
    peak = 989.0
    points = [{"m": m, "n": n, "k": k, "tflops": peak * gemm_efficiency(m, n, k, truth)} for m, n, k in SHAPES]
    fitted = fit_gemm(points, peak)
    assert fitted.gemm_peak_fraction == pytest.approx(0.7, rel=1e-3)
    assert fitted.gemm_half_dim == pytest.approx(100.0, rel=1e-2)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"gpu": "H100", "gemms": points}))
    assert load_calibration(path, peak).gemm_peak_fraction == pytest.approx(0.7, rel=1e-3)


@pytest.mark.parametrize("text,msg", [("not json", "is not JSON"), ('{"gpu": "x"}', "no 'gemms' list"),
                                      ('{"gemms": [{"m": 1}]}', "at least 3 shapes")])
def test_a_bad_calibration_file_is_one_error(tmp_path, text, msg):
    path = tmp_path / "cal.json"
    path.write_text(text)
    with pytest.raises(FlmError, match=msg):
        load_calibration(path, 312.0)
