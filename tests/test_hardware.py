"""The matmul peak MFU is measured against: best of several tries, cached per machine (CPU model + threads),
``FLM_PEAK_FLOPS`` above both; an MFU above 1 is reported with one warning."""

from __future__ import annotations

import json

import pytest
import torch

from flm import hardware
from flm.config import config_from_dict
from flm.errors import FlmError
from flm.hardware import CATALOG_FILE, MfuWatch, load_catalog, machine_key, machine_peak
from flm.train.loop import train_stage
from flm.train.metrics import read_metrics

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(hardware.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(hardware.PEAK_ENV, raising=False)
    monkeypatch.setattr(hardware, "_PEAKS", {})
    return tmp_path / "cache" / "peak.json"


def _measures(monkeypatch, values: list[float]) -> list[float]:
    left = list(values)
    monkeypatch.setattr(hardware, "measure_matmul_peak", lambda device, seconds: left.pop(0))
    return left


def test_the_best_of_several_tries_is_cached_per_machine(cache, monkeypatch):
    left = _measures(monkeypatch, [1e9, 3e9, 2e9])
    peak = machine_peak(CPU)
    assert peak.flops == 3e9 and not left and "best of 3" in peak.source
    key = machine_key(CPU)
    assert json.loads(cache.read_text()) == {key: 3e9}
    assert key.startswith("cpu:") and key.endswith(f":{torch.get_num_threads()} threads")
    monkeypatch.setattr(hardware, "_PEAKS", {})  # a new process on the same machine: no measurement
    _measures(monkeypatch, [])
    again = machine_peak(CPU)
    assert again.flops == 3e9 and again.source.startswith(f"cached in {cache}")


def test_other_thread_counts_are_other_machines(cache, monkeypatch):
    _measures(monkeypatch, [1e9] * 3)
    machine_peak(CPU)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 977)
    _measures(monkeypatch, [5e9] * 3)
    assert machine_peak(CPU).flops == 5e9 and len(json.loads(cache.read_text())) == 2


def test_the_environment_overrides_and_a_bad_value_is_one_line(cache, monkeypatch):
    _measures(monkeypatch, [])
    monkeypatch.setenv(hardware.PEAK_ENV, "2.5e12")
    assert machine_peak(CPU).flops == 2.5e12 and not cache.exists()
    monkeypatch.setenv(hardware.PEAK_ENV, "fast")
    with pytest.raises(FlmError, match="FLM_PEAK_FLOPS = 'fast' is not a positive number"):
        machine_peak(CPU)


def test_a_damaged_or_unwritable_cache_costs_only_a_measurement(cache, monkeypatch):
    cache.parent.mkdir()
    cache.write_text("{not json")
    _measures(monkeypatch, [4e9] * 3)
    assert machine_peak(CPU).flops == 4e9 and json.loads(cache.read_text()) == {machine_key(CPU): 4e9}
    monkeypatch.setattr(hardware, "_PEAKS", {})
    monkeypatch.setenv(hardware.CACHE_ENV, str(cache))  # a file where the folder should be
    _measures(monkeypatch, [6e9] * 3)
    assert machine_peak(CPU).flops == 6e9


def test_a_real_measurement_is_positive_and_cached(cache):
    peak = machine_peak(CPU, tries=2)
    assert peak.flops > 1e6 and json.loads(cache.read_text())[machine_key(CPU)] == peak.flops


def test_mfu_above_one_warns_once(capsys):
    watch = MfuWatch(1e9, "measured")
    assert watch(5e8) == 0.5 and capsys.readouterr().err == ""
    assert watch(2e9) == 2.0 and watch(3e9) == 3.0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: MFU 2.00 is above 1: the peak 1e+09 FLOP/s (measured)")
    quiet = MfuWatch(1e9, "measured", enabled=False)  # not the main rank
    assert quiet(2e9) == 2.0 and capsys.readouterr().err == ""


def test_training_against_a_too_low_peak_says_so_once(tiny_cfg, tmp_path, capsys):
    cfg = config_from_dict(tiny_cfg(steps=3, eval_every=0, peak_flops=1.0))
    train_stage(cfg, tmp_path / "run")
    mfu = [r["mfu"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "mfu" in r]
    assert len(mfu) == 3 and min(mfu) > 1
    err = capsys.readouterr().err
    assert err.count("warning: MFU") == 1 and "(train.peak_flops) is too low for this machine" in err


# ----- the GPU and network catalog (flm/hardware.toml) -----------------------------------------------------------
def test_catalog_names_aliases_and_device_strings():
    cat = load_catalog()
    assert cat.gpu("NVIDIA A100-SXM4-80GB").name == "A100"
    assert cat.gpu("a100-40").hbm_gib == 40
    assert cat.gpu("A800").link_gbps == 200  # NVLink capped at 400 GB/s both ways
    assert cat.gpu("H800").link_gbps < cat.gpu("H100").link_gbps
    assert {"A100-40", "A100", "A800", "H100", "H800", "H200"} <= set(cat.gpus)
    for g in cat.gpus.values():
        assert g.network in cat.networks


def test_every_catalog_entry_names_its_source():
    headers = [ln for ln in CATALOG_FILE.read_text().splitlines() if ln.startswith("[")]
    assert headers and all("#" in ln and len(ln.split("#", 1)[1].strip()) > 10 for ln in headers)


def test_unknown_gpu_and_incomplete_entries_are_one_error(tmp_path):
    with pytest.raises(FlmError, match="did you mean H200"):
        load_catalog().gpu("H2OO")
    bad = tmp_path / "hw.toml"
    bad.write_text("[gpus.X]\npeak_tflops = 100.0\n")
    with pytest.raises(FlmError, match="gpus.X has no hbm_gib"):
        load_catalog(bad)
    bad.write_text("[networks.n]\ngbps_per_gpu = -1\nlatency_us = 1\n")
    with pytest.raises(FlmError, match="gbps_per_gpu = -1"):
        load_catalog(bad)
