"""Export, import and consolidate onto a full disk: one line naming the output path, exit 2, nothing left behind,
whether the writer raised ENOSPC, safetensors' own error, or (gguf: numpy) only a short write on a full disk."""

from __future__ import annotations

import warnings

import pytest
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError

from flm import io
from flm.cli import main
from flm.interop import hf_export, hf_import

FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def _raise_safetensors(*args, **kwargs):
    raise SafetensorError(FULL)


def _check(capsys, code: int, out, cmd: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"flm {cmd}: error: cannot use {out}: No space left on device; free space"), err
    assert not out.exists() and not list(out.parent.glob(f".tmp-{out.name}*"))


def test_export_hf_onto_a_full_disk_names_the_folder(make_ckpt, tmp_path, monkeypatch, capsys):
    ckpt, out = make_ckpt(), tmp_path / "hf"
    monkeypatch.setattr(hf_export, "write_tensors", _raise_safetensors)
    _check(capsys, main(["export", "hf", str(ckpt), str(out)]), out, "export")


def test_import_hf_onto_a_full_disk_names_the_folder(make_ckpt, tmp_path, monkeypatch, capsys):
    hf = tmp_path / "hf"
    assert main(["export", "hf", str(make_ckpt()), str(hf)]) == 0
    out = tmp_path / "imported"
    monkeypatch.setattr(hf_import, "write_tensors", _raise_safetensors)
    _check(capsys, main(["import", "hf", str(hf), str(out)]), out, "import")


def test_export_gguf_short_write_on_a_full_disk_names_the_file(make_ckpt, tmp_path, monkeypatch, capsys):
    gguf = pytest.importorskip("gguf")
    ckpt, out = make_ckpt(), tmp_path / "m.gguf"

    def write_tensor_data(self, tensor, *args, **kwargs):  # what numpy's tofile says when the disk fills
        raise OSError(f"{tensor.nbytes} requested and 8000 written")

    monkeypatch.setattr(io, "_free_bytes", lambda path: 0)
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", write_tensor_data)
    _check(capsys, main(["export", "gguf", str(ckpt), str(out)]), out, "export")


def test_consolidate_onto_a_full_disk_names_the_folder(make_ckpt, tmp_path, monkeypatch, capsys):
    """A sharded checkpoint (its model as DCP shards) consolidated while safetensors finds the disk full."""
    from flm.checkpoint import consolidate as consolidate_module
    from flm.checkpoint import load_checkpoint, save_checkpoint, staging_folder
    from flm.checkpoint.store import read_config
    from flm.data.tokenizer import load_tokenizer

    full = make_ckpt()
    data, cfg = load_checkpoint(full)
    folder = tmp_path / "sharded"
    staged = staging_folder(folder)
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(data.model, checkpoint_id=staged / "model", no_dist=True)
    data.model = {}
    save_checkpoint(folder, data, read_config(full / "config.toml"), load_tokenizer(full), staged=staged)
    out = tmp_path / "consolidated"
    monkeypatch.setattr(consolidate_module, "_stream", _raise_safetensors)
    _check(capsys, main(["checkpoint", "consolidate", str(folder), str(out), "--no-progress"]), out, "checkpoint")

