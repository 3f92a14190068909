"""Offline growth of a saved checkpoint, streamed tensor by tensor (what ``flm grow`` runs).

Reads one old tensor, builds the grown one (ops.build_tensor), writes it to the new safetensors file (or
the new DCP folder, for a sharded checkpoint) and drops both, so peak memory is about one old plus one new
tensor, not the model: a checkpoint larger than RAM can be grown. The output is a complete checkpoint folder
(store.py's layout) with the growth masks at m = 0 in growth.safetensors and the ramp in trainer.json, built
under a temporary name and renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

from flm.checkpoint.store import (
    MANIFEST,
    is_sharded,
    manifest_text,
    read_config,
    resolve_checkpoint,
    verify_manifest,
)
from flm.config import GrowthConfig, ModelConfig, RunConfig, config_from_dict, config_to_dict, save_config
from flm.errors import FlmError
from flm.growth.ops import MOMENTS, build_tensor, check_shapes, moment_plan
from flm.growth.plan import GrowthPlan, TensorPlan, make_plan
from flm.growth.region import build_region
from flm.io import atomic_folder, disk_full_is_one_line, sha256_file
from flm.model import FLM
from flm.tensorio import Region, TensorSource, open_tensors, stream_dcp, stream_tensors

# Files this module writes itself; every other file of the checkpoint (tokenizer, rng, ...) is copied.
_HANDLED = {"model.safetensors", "model", "optim.safetensors", "optim", "optim.json", "growth.safetensors",
            "trainer.json", "config.toml", MANIFEST}  # fmt: skip

Progress = Callable[[int], None]  # called with the bytes just written


@dataclass
class GrowReport:
    out: Path
    old: dict[str, int]
    new: dict[str, int]
    bytes_written: int
    seconds: float
    largest_tensor_bytes: int


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint folder (model.safetensors or a DCP model/ folder), or a run folder -> its newest."""
    p = Path(path)
    if (p / "model" / ".metadata").is_file():
        return p
    return resolve_checkpoint(p)


def _write_tensors(
    folder: Path,
    stem: str,
    plans: list[TensorPlan],
    src: TensorSource | None,
    seed: int,
    default_dtype: torch.dtype,
    progress: Progress | None,
    sharded: bool,
) -> tuple[dict[str, dict[str, object]], int, int]:
    """Write the tensors of ``plans`` as ``folder/stem.safetensors`` or the DCP folder ``folder/stem/``;
    returns (manifest entries of the files already hashed, tensor bytes, largest tensor bytes)."""

    def dtype_of(tp: TensorPlan) -> torch.dtype:
        return src.dtype(tp.source) if src is not None and tp.source is not None else default_dtype

    by_name = {tp.name: tp for tp in plans}

    def grown(name: str) -> torch.Tensor:
        tp = by_name[name]
        old = src.read(tp.source) if src is not None and tp.source is not None else None
        return build_tensor(tp, old, seed, dtype_of(tp))

    entries = [(tp.name, dtype_of(tp), tp.shape) for tp in plans]
    if sharded:
        nbytes, largest = stream_dcp(folder / stem, entries, grown, progress)
        return {}, nbytes, largest
    sha, nbytes, largest = stream_tensors(folder / f"{stem}.safetensors", entries, grown, progress,
                                          metadata={"format": "pt"})
    return {f"{stem}.safetensors": {"bytes": nbytes, "sha256": sha}}, nbytes, largest


def _moment_plans(plan: GrowthPlan, src: TensorSource) -> list[TensorPlan]:
    out = []
    for tp in plan.tensors:
        if tp.new_param:  # new blocks: no moments, AdamW starts them fresh (step 0)
            continue
        for kind in MOMENTS:
            mp = moment_plan(tp, kind)
            if mp.source is not None and mp.source not in src.shapes:  # never had a gradient: zeros
                mp = TensorPlan(mp.name, mp.shape, None, mp.init, mp.new_param)
            out.append(mp)
    return out


class GrownTensors(Mapping[str, torch.Tensor]):
    """The grown model's tensors (or moments), each built only when asked for, from the one old tensor it
    grows from (read from the checkpoint then); ``region`` builds one rank's box of it from the old slice
    inside that box alone, so no rank holds or reads the whole old or new model. Bitwise what
    ``flm.growth.ops.grow`` gives (same plan, same seed)."""

    def __init__(self, plans: list[TensorPlan], src: TensorSource | None, seed: int, dtype: torch.dtype) -> None:
        self._plans = {tp.name: tp for tp in plans}
        self._src, self._seed, self._dtype = src, seed, dtype

    def __getitem__(self, name: str) -> torch.Tensor:
        tp = self._plans[name]
        if self._src is None or tp.source is None:
            return build_tensor(tp, None, self._seed, self._dtype)
        return build_tensor(tp, self._src.read(tp.source), self._seed, self._src.dtype(tp.source))

    def region(self, name: str, region: Region) -> torch.Tensor:
        """``self[name][region]``, reading only the old slice inside ``region``: a rank's shard."""
        tp, src = self._plans[name], self._src
        if src is None or tp.source is None:
            return build_region(tp, None, None, region, self._seed, self._dtype)
        source = tp.source
        return build_region(tp, src.shapes[source], lambda r: src.read_region(source, r), region, self._seed,
                            src.dtype(source))

    def __contains__(self, name: object) -> bool:
        return name in self._plans

    def __iter__(self) -> Iterator[str]:
        return iter(self._plans)

    def __len__(self) -> int:
        return len(self._plans)

    def close(self) -> None:
        """Close the checkpoint reader (once the trainer has taken its shards)."""
        if self._src is not None:
            self._src.close()


def grown_tensors(folder: Path, cfg: ModelConfig, growth: GrowthConfig, seed: int
                  ) -> tuple[GrowthPlan, GrownTensors, GrownTensors | None]:
    """(plan, weights, moments or None) of the checkpoint ``folder`` (full or sharded) grown by ``growth``,
    built lazily, tensor by tensor."""
    plan = make_plan(cfg, growth)
    model_src = open_tensors(folder, "model")
    if model_src is None:
        raise FlmError(f"{folder}: no model.safetensors (or DCP model/ folder); not a checkpoint")
    check_shapes(cfg, model_src.shapes, str(folder))
    dtype = model_src.dtype("tok_emb.weight")
    optim_src = None if growth.reset_optimizer else open_tensors(folder, "optim")
    moments = None
    if optim_src is not None:
        check_shapes(cfg, optim_src.shapes, str(folder), moments=True)
        some = next(iter(optim_src.shapes), None)  # new moments take the saved moments' dtype, as grow() does
        moments = GrownTensors(_moment_plans(plan, optim_src), optim_src, seed,
                               optim_src.dtype(some) if some else dtype)
    return plan, GrownTensors(plan.tensors, model_src, seed, dtype), moments


def _grown_run_config(cfg: RunConfig, plan: GrowthPlan) -> RunConfig:
    data = config_to_dict(cfg)
    data["model"] = config_to_dict(plan.new)
    try:
        return config_from_dict(data, where="grown config")
    except FlmError:  # the stage plan no longer fits the grown shape: keep the run, drop the plan
        data.pop("stages", None)
        return config_from_dict(data, where="grown config")


def grow_checkpoint(
    src_path: str | os.PathLike[str],
    growth: GrowthConfig,
    out: str | os.PathLike[str],
    seed: int = 0,
    progress: Callable[[int], Progress] | None = None,
    fmt: Literal["full", "sharded"] | None = None,
) -> GrowReport:
    """Grow the checkpoint at ``src_path`` into the new folder ``out``. ``progress(total_bytes)`` may
    return a callback that receives the bytes written as they go. ``fmt``: write safetensors files ("full")
    or torch.distributed.checkpoint folders ("sharded", which the trainer loads under any layout); default:
    the format of the input."""
    t0 = time.perf_counter()
    if growth.method != "msg":  # the baselines grow in memory, inside flm run (flm.growth.baseline_stage)
        raise FlmError(f"flm grow: method {growth.method!r} is a baseline that runs only between the stages of "
                       "`flm run`; drop method (MSG) or put the growth in a [[stages]] grow table")
    folder = find_checkpoint(src_path)
    sharded = is_sharded(folder) if fmt is None else fmt == "sharded"
    out = Path(out)
    if out.exists():
        raise FlmError(f"--out {out} already exists; growth never overwrites, pick a new folder")
    verify_manifest(folder)  # as every reader does: a damaged (or hand-assembled) checkpoint is not grown
    cfg = read_config(folder / "config.toml")
    if (folder / "growth.safetensors").is_file():
        raise FlmError(
            f"{folder} is in the middle of a growth ramp (growth.safetensors); train until the ramp ends, "
            "then grow that checkpoint (one growth at a time)"
        )
    plan = make_plan(cfg.model, growth)
    model_src = open_tensors(folder, "model")
    if model_src is None:
        raise FlmError(f"{folder}: no model.safetensors (or DCP model/ folder); not a checkpoint")
    check_shapes(cfg.model, model_src.shapes, f"{folder / 'model.safetensors'}")
    optim_src = None if growth.reset_optimizer else open_tensors(folder, "optim")
    if optim_src is not None:
        check_shapes(cfg.model, optim_src.shapes, f"{folder / 'optim.safetensors'}", moments=True)
    model_dtype = model_src.dtype("tok_emb.weight")

    files: dict[str, dict[str, object]] = {}
    try:
        with disk_full_is_one_line(out, "free space (or pick an --out on another disk), then grow again"), \
                atomic_folder(out) as tmp:
            moment_plans = _moment_plans(plan, optim_src) if optim_src is not None else []
            itemsize = torch.empty((), dtype=model_dtype).element_size()
            total = sum(torch.Size(tp.shape).numel() * itemsize for tp in plan.tensors + moment_plans)
            tick = progress(total) if progress is not None else None
            files, written, largest = _write_tensors(tmp, "model", plan.tensors, model_src, seed, model_dtype,
                                                     tick, sharded)
            if optim_src is not None:
                hashed, nbytes, big = _write_tensors(tmp, "optim", moment_plans, optim_src, seed, model_dtype,
                                                     tick, sharded)
                files, written, largest = files | hashed, written + nbytes, max(largest, big)
            _write_small_files(folder, tmp, cfg, plan, growth)
            _write_manifest(tmp, files)
    finally:
        model_src.close()
        if optim_src is not None:
            optim_src.close()
    return GrowReport(out, cfg.model.shape(), plan.new.shape(), written, time.perf_counter() - t0, largest)


def _write_manifest(tmp: Path, files: dict[str, dict[str, object]]) -> None:
    """The manifest: ``files`` (the tensors, hashed as they were written) and every other file in ``tmp``
    (the small files, and the shard files of a sharded checkpoint)."""
    for p in sorted(tmp.rglob("*")):
        name = p.relative_to(tmp).as_posix()
        if p.is_file() and name not in files:
            files[name] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    (tmp / MANIFEST).write_text(manifest_text(files))


def _write_small_files(
    folder: Path, tmp: Path, cfg: RunConfig, plan: GrowthPlan, growth: GrowthConfig
) -> None:
    masks = plan.mask_state()
    ramping = growth.ramp_steps > 0 and len(masks) > 1  # more than grow_m: something grew
    if ramping:
        save_file({k: v.contiguous() for k, v in masks.items()}, str(tmp / "growth.safetensors"))
    if (folder / "optim.json").is_file():
        meta = json.loads((folder / "optim.json").read_text())
        if growth.reset_optimizer:
            meta["step"] = 0
        steps = {} if growth.reset_optimizer else plan.carried_steps(meta.get("step", 0), meta.get("param_steps"))
        meta.pop("param_steps", None)
        if steps:
            meta["param_steps"] = steps
        (tmp / "optim.json").write_text(json.dumps(meta, indent=1))
    if (folder / "trainer.json").is_file():
        trainer = json.loads((folder / "trainer.json").read_text())
        trainer["ramp"] = {"step": 0, "total": growth.ramp_steps} if ramping else None
        (tmp / "trainer.json").write_text(json.dumps(trainer, indent=1))
    save_config(_grown_run_config(cfg, plan), tmp / "config.toml")
    for p in folder.iterdir():
        if p.name in _HANDLED or p.name.startswith("."):
            continue
        if p.is_dir():
            shutil.copytree(p, tmp / p.name)
        else:
            shutil.copy2(p, tmp / p.name)


@torch.no_grad()
def max_logit_delta(old_dir: Path, new_dir: Path, batch: int = 2, seq: int = 32, seed: int = 0) -> float:
    """Largest |logit difference| between two checkpoints on one batch of random tokens (masks applied)."""
    def logits(folder: Path, tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = read_config(folder / "config.toml").model
        src = open_tensors(folder, "model")
        assert src is not None
        model = FLM(cfg)
        model.load_state_dict({k: src.read(k) for k in src.shapes}, strict=True)
        src.close()
        gsrc = open_tensors(folder, "growth")
        if gsrc is not None:
            model.load_growth_state({k: gsrc.read(k) for k in gsrc.shapes})
        model.eval()
        if tokens is None:
            gen = torch.Generator().manual_seed(seed)
            tokens = torch.randint(0, cfg.vocab_size, (batch, min(seq, cfg.max_seq_len)), generator=gen)
        return model(tokens), tokens

    ref, tokens = logits(find_checkpoint(old_dir), None)
    new, _ = logits(Path(new_dir), tokens)
    return (new - ref).abs().max().item()
