"""Streaming safetensors I/O: byte-compatible with the safetensors library, direct and buffered alike."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from flm.errors import FlmError
from flm.tensorio import SafetensorsReader, SafetensorsWriter


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(300, 101, generator=g),  # not a whole number of 4 KiB blocks
        "flag": torch.tensor(True),
        "ids": torch.arange(7, dtype=torch.int64),
        "half": torch.randn(5, generator=g).bfloat16(),
        "empty": torch.zeros(0, 3),
        "big": torch.randn(9000, 1000, generator=g),  # larger than the 32 MiB staging buffer
    }


@pytest.mark.parametrize("direct", [True, False])
def test_writer_output_is_safetensors(tmp_path: Path, direct: bool) -> None:
    ts = _tensors()
    path = tmp_path / "x.safetensors"
    w = SafetensorsWriter(
        path, [(k, v.dtype, tuple(v.shape)) for k, v in ts.items()], {"format": "pt"}, direct
    )
    for k, v in ts.items():
        w.write(k, v)
    sha = w.close()
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest() and path.stat().st_size == w.nbytes
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == set(ts) and f.metadata() == {"format": "pt"}
        assert all(torch.equal(f.get_tensor(k), v) for k, v in ts.items())


@pytest.mark.parametrize("direct", [True, False])
def test_reader_reads_safetensors_files(tmp_path: Path, direct: bool) -> None:
    ts = _tensors()
    save_file(ts, str(tmp_path / "y.safetensors"))
    r = SafetensorsReader(tmp_path / "y.safetensors", direct=direct)
    assert r.shapes == {k: tuple(v.shape) for k, v in ts.items()}
    assert all(torch.equal(r.read(k), v) and r.dtype(k) == v.dtype for k, v in ts.items())
    r.close()


def test_writer_checks_order_and_completeness(tmp_path: Path) -> None:
    w = SafetensorsWriter(
        tmp_path / "z.safetensors", [("a", torch.float32, (2,)), ("b", torch.float32, (3,))]
    )
    with pytest.raises(ValueError, match="expected a"):
        w.write("b", torch.zeros(3))
    w.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="1 tensors not written"):
        w.close()


def test_corrupt_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(FlmError, match="not a readable safetensors file"):
        SafetensorsReader(tmp_path / "bad.safetensors")
    save_file({"w": torch.zeros(1000)}, str(tmp_path / "cut.safetensors"))
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(FlmError, match="truncated"):
        SafetensorsReader(tmp_path / "cut.safetensors").read("w")
