"""A local transformers model folder read tensor by tensor: its config.json and its weights (one or
several safetensors files, or PyTorch ``.bin`` shards opened with mmap), never the whole model at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flm.errors import FlmError
from flm.tensorio import SafetensorsReader

CONFIG = "config.json"
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE = ("model.safetensors", "pytorch_model.bin")


def read_hf_config(folder: Path) -> dict[str, Any]:
    """config.json of a transformers folder, or one FlmError line saying why ``folder`` is not one."""
    if not folder.is_dir():
        raise FlmError(f"{folder}: not a folder; give a local transformers model folder (config.json + weights)")
    path = folder / CONFIG
    if not path.is_file():
        raise FlmError(
            f"{folder} is not a transformers model folder (no {CONFIG}); give the folder save_pretrained wrote"
        )
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FlmError(f"{path}: unreadable ({e}); give a valid transformers config.json") from None
    if not isinstance(cfg, dict):
        raise FlmError(f"{path}: not a JSON object; give a valid transformers config.json")
    return cfg


class HFWeights:
    """Every tensor of a transformers folder by name: ``shapes``, ``dtype(name)``, ``read(name)``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: dict[str, Any] = {}
        index = next((folder / n for n in _INDEXES if (folder / n).is_file()), None)
        if index is not None:
            try:
                self._where: dict[str, str] = dict(json.loads(index.read_text())["weight_map"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise FlmError(f"{index}: unreadable weight index ({e}); the model folder is damaged") from None
            for name in sorted(set(self._where.values())):
                self._files[name] = self._open(name)
        else:
            single = next((n for n in _SINGLE if (folder / n).is_file()), None)
            if single is None:
                raise FlmError(
                    f"{folder} holds no weights (model.safetensors, pytorch_model.bin or a sharded index); "
                    "give a complete transformers model folder"
                )
            self._files[single] = self._open(single)
            self._where = {k: single for k in self._files[single].shapes}
        self.shapes = {k: tuple(self._files[f].shapes[k]) for k, f in self._where.items()}

    def _open(self, name: str) -> Any:
        path = self.folder / name
        if not path.is_file():
            raise FlmError(f"{path} is missing (named by the weight index); the model folder is incomplete")
        if name.endswith(".safetensors"):
            return SafetensorsReader(path)
        return _BinFile(path)

    def dtype(self, name: str) -> torch.dtype:
        return self._files[self._where[name]].dtype(name)

    def read(self, name: str) -> Tensor:
        if name not in self._where:
            raise FlmError(f"{self.folder}: tensor {name} is missing; the weights do not match config.json")
        return self._files[self._where[name]].read(name)

    def close(self) -> None:
        for f in self._files.values():
            f.close()


class _BinFile:
    """A PyTorch pickle shard opened with ``mmap=True``: tensors are paged in when read, not at open."""

    def __init__(self, path: Path) -> None:
        try:
            self._state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means an unreadable shard
            raise FlmError(f"{path}: cannot read PyTorch weights ({str(e).splitlines()[0]})") from None
        self.shapes = {k: tuple(v.shape) for k, v in self._state.items()}

    def dtype(self, name: str) -> torch.dtype:
        return self._state[name].dtype

    def read(self, name: str) -> Tensor:
        return self._state[name].clone()

    def close(self) -> None:
        self._state = {}
