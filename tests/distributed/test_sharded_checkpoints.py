"""Sharded checkpoints (``train.checkpoint_format = "sharded"``, torch.distributed.checkpoint): saved at step 3
under dp2 (in the background), resumed under tp2, pp2, tp2·dp2, pp2·dp2 and in one process, each run continues
as an uninterrupted one-process run does (losses, final weights and moments to 1e-4); every command that reads
a checkpoint reads the sharded one as a whole; a missing or damaged shard is refused with one line naming
it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from flm.checkpoint import is_sharded, latest_checkpoint, list_checkpoints, load_checkpoint, load_model
from flm.cli import main
from flm.config import GrowthConfig, config_from_dict
from flm.distributed.env import DistEnv
from flm.errors import FlmError
from flm.growth.offline import grown_tensors
from flm.growth.ops import grow
from flm.train.loop import train_stage
from flm.train.metrics import read_metrics
from tests.conftest import tiny_config_dict

from ._checkpoint_workers import grow_into_layouts, verify_on_ranks
from ._harness import spawn
from ._train_workers import train_then_resume

ONE = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
STEPS = 5
RESUMED = {"tp2": {"tp": 2}, "pp2": {"pp": 2}}  # on 2 ranks
RESUMED_4 = {"tp2dp2": {"tp": 2}, "pp2dp2": {"pp": 2}}  # on 4 ranks


@pytest.fixture(scope="module")
def cfg(tiny_corpus, prepared_dir) -> dict:
    cfg = tiny_config_dict(tiny_corpus, prepared_dir, steps=STEPS, batch_size=4, eval_every=STEPS, ckpt_every=3)
    cfg["train"]["keep_last"] = 5
    return cfg


@pytest.fixture(scope="module")
def runs(cfg, tmp_path_factory):
    """The uninterrupted one-process run, and the dp2 run stopped at step 3 then resumed in each layout."""
    root = tmp_path_factory.mktemp("sharded")
    train_stage(config_from_dict(cfg), root / "reference", env=ONE)
    sharded = cfg | {"train": cfg["train"] | {"checkpoint_format": "sharded"}}
    save = tmp_path_factory.mktemp("save")
    background = sharded | {"train": sharded["train"] | {"async_checkpoint": True}}  # shards written async
    spawn(train_then_resume, 2, save, background, [("cut", {}, 3, False)], timeout=300)
    for name in [*RESUMED, *RESUMED_4, "one"]:
        shutil.copytree(save / "cut", root / name)
    for world, layouts in ((2, RESUMED), (4, RESUMED_4)):
        jobs = [(str(root / name), parallel, None, True) for name, parallel in layouts.items()]
        spawn(train_then_resume, world, tmp_path_factory.mktemp(f"resume{world}"), sharded, jobs, timeout=300)
    train_stage(config_from_dict(sharded), root / "one", env=ONE, resume=True)
    return root, save / "cut"


def _losses(run) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("name", [*RESUMED, *RESUMED_4, "one"])
def test_resume_under_another_layout_continues_like_one_process(runs, name):
    root, _ = runs
    ref, got = _losses(root / "reference"), _losses(root / name)
    assert len(got) == STEPS
    assert all(abs(a - b) <= 1e-4 * b for a, b in zip(got, ref)), (got, ref)
    ref_w, _ = load_checkpoint(latest_checkpoint(root / "reference"))
    got_w, _ = load_checkpoint(latest_checkpoint(root / name))  # sharded: consolidated on load
    assert is_sharded(latest_checkpoint(root / name))
    assert max(_rel(got_w.model[k], ref_w.model[k]) for k in ref_w.model) <= 1e-4
    assert max(_rel(got_w.optim_tensors[k], ref_w.optim_tensors[k]) for k in ref_w.optim_tensors) <= 1e-4


def test_sharded_checkpoint_reads_as_a_whole(runs):
    root, cut = runs
    folder = latest_checkpoint(cut)
    data, _ = load_checkpoint(folder)
    ref, _ = load_checkpoint(list_checkpoints(root / "reference")[0])  # step 3 as well
    assert set(data.model) == set(ref.model) and set(data.optim_tensors) == set(ref.optim_tensors)
    assert max(_rel(data.model[k], ref.model[k]) for k in ref.model) <= 1e-4
    model, _, _ = load_model(folder)  # what flm generate / eval use
    assert torch.equal(model.tok_emb.weight, data.model["tok_emb.weight"])


def test_missing_or_damaged_shard_is_refused(runs, tmp_path):
    _, cut = runs
    folder = tmp_path / "step"
    shutil.copytree(latest_checkpoint(cut), folder)
    shard = sorted((folder / "model").glob("*.distcp"))[-1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(FlmError, match=rf"model/{shard.name} fails its sha256 check"):
        load_checkpoint(folder)
    shard.unlink()
    with pytest.raises(FlmError, match=rf"model/{shard.name} is missing"):
        load_checkpoint(folder)


def test_ranks_split_the_hashing_and_all_hear_of_a_damaged_file(runs, tmp_path):
    """Under 2 ranks each hashes every other file of the manifest; a flipped byte in a file only rank 1 hashes
    is raised on both ranks, naming the file."""
    _, cut = runs
    bad = tmp_path / "ckpt"
    shutil.copytree(latest_checkpoint(cut), bad)
    names = list(json.loads((bad / "manifest.json").read_text())["files"])
    victim = bad / names[1]  # rank 1's share: files 1, 3, ...
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    spawn(verify_on_ranks, 2, tmp_path, str(bad), timeout=120)
    errors = [(tmp_path / f"verify-{r}.txt").read_text() for r in range(2)]
    assert errors[0] == errors[1] and names[1] in errors[0] and "sha256" in errors[0]
    shutil.copy2(latest_checkpoint(cut) / names[1], victim)
    spawn(verify_on_ranks, 2, tmp_path, str(bad), timeout=120)
    assert [(tmp_path / f"verify-{r}.txt").read_text() for r in range(2)] == ["", ""]


def test_consolidate_writes_the_same_tensors_as_a_full_checkpoint(runs, tmp_path, capsys):
    _, cut = runs
    folder = latest_checkpoint(cut)
    out = tmp_path / "full"
    assert main(["checkpoint", "consolidate", str(folder), str(out), "--no-progress"]) == 0
    assert not is_sharded(out) and (out / "model.safetensors").is_file()
    a, _ = load_checkpoint(folder)
    b, _ = load_checkpoint(out)  # manifest verified
    for x, y in ((a.model, b.model), (a.optim_tensors, b.optim_tensors)):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert a.trainer == b.trainer and a.optim_meta == b.optim_meta
    capsys.readouterr()
    assert main(["checkpoint", "consolidate", str(folder), str(out)]) == 2  # never overwrites
    assert main(["checkpoint", "consolidate", str(out), str(tmp_path / "again")]) == 2  # full already
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "exists" in errors[0] and "is a full checkpoint already" in errors[1]


def test_grow_reads_a_sharded_checkpoint(runs, tmp_path):
    _, cut = runs
    out = tmp_path / "grown"
    assert main(["grow", str(latest_checkpoint(cut)), "--to", "d_ff=192", "--out", str(out), "--no-progress",
                 "--check"]) == 0
    grown, cfg = load_checkpoint(out)
    assert cfg.model.d_ff == 192 and grown.model["blocks.0.mlp.up.weight"].shape[0] == 192


@pytest.mark.parametrize("fmt", ["sharded", "full"])
def test_grow_writes_a_sharded_checkpoint_like_the_full_one(runs, tmp_path, fmt):
    """``flm grow`` of a sharded checkpoint writes a sharded one by default (a full one on request): both read
    back as bitwise ``grow`` of the consolidated checkpoint, and verify against their manifest."""
    _, cut = runs
    folder = latest_checkpoint(cut)
    out = tmp_path / "grown"
    argv = ["grow", str(folder), "--to", "d_model=64,n_layers=3", "--out", str(out), "--no-progress", "--seed", "5"]
    assert main(argv + (["--format", "full"] if fmt == "full" else [])) == 0
    assert is_sharded(out) == (fmt == "sharded")
    assert main(["checkpoint", "verify", str(out)]) == 0
    data, cfg = load_checkpoint(folder)
    ref = grow(cfg.model, data.model, GrowthConfig(d_model=64, n_layers=3), data.optim_tensors, seed=5)
    grown, _ = load_checkpoint(out)
    assert set(grown.model) == set(ref.state_dict)
    assert all(torch.equal(grown.model[k], v) for k, v in ref.state_dict.items())
    assert ref.optim_state is not None
    assert all(torch.equal(grown.optim_tensors[k], ref.optim_state[k]) for k in grown.optim_tensors)


def test_lazy_growth_of_a_sharded_checkpoint_equals_in_memory_growth(runs):
    """What ``flm run`` hands the next stage (each tensor built from the shards when a rank asks for it) is
    bitwise ``grow`` of the consolidated checkpoint: weights and moments."""
    _, cut = runs
    folder = latest_checkpoint(cut)
    data, cfg = load_checkpoint(folder)
    growth = GrowthConfig(d_model=64, d_ff=192, n_layers=3)
    ref = grow(cfg.model, data.model, growth, data.optim_tensors, seed=5)
    plan, weights, moments = grown_tensors(folder, cfg.model, growth, seed=5)
    assert plan.new == ref.cfg and moments is not None and ref.optim_state is not None
    assert set(weights) == set(ref.state_dict) and set(moments) == set(ref.optim_state)
    assert all(torch.equal(weights[k], v) for k, v in ref.state_dict.items())
    assert all(torch.equal(moments[k], v) for k, v in ref.optim_state.items())


def test_sharded_growth_builds_each_rank_from_its_old_slices(runs, tmp_path):
    """The next stage built on 4 ranks (tp2·dp2, pp2·dp2) straight from the dp2 sharded checkpoint: weights and
    moments bitwise ``grow`` of the consolidated checkpoint; no rank reads a whole tensor, and the 4 ranks
    together read the old bytes about once, not 4 times as whole-tensor reads would (above once: the new block
    re-reads the slices of the block it copies, and under pp the last stage reads the tied embedding again
    for its readout copy)."""
    _, cut = runs
    folder = latest_checkpoint(cut)
    data, cfg = load_checkpoint(folder)
    growth = {"d_model": 64, "d_ff": 192, "n_layers": 3}
    ref = grow(cfg.model, data.model, GrowthConfig(**growth), data.optim_tensors, seed=5)
    layouts = {"tp2dp2": {"tp": 2}, "pp2dp2": {"pp": 2}}
    spawn(grow_into_layouts, 4, tmp_path, str(folder), cfg.model.model_dump(), growth, layouts, 5, timeout=300)
    old_bytes = sum(t.numel() * t.element_size() for t in [*data.model.values(), *data.optim_tensors.values()])
    assert ref.optim_state is not None
    for name in layouts:
        got = torch.load(tmp_path / f"{name}.pt")
        assert set(got["model"]) == set(ref.state_dict) and set(got["optim"]) == set(ref.optim_state)
        assert all(torch.equal(got["model"][k], v) for k, v in ref.state_dict.items()), name
        assert all(torch.equal(got["optim"][k], v) for k, v in ref.optim_state.items()), name
        reads = [json.loads((tmp_path / f"{name}-{rank}.json").read_text()) for rank in range(4)]
        assert all(r["whole"] == 0 for r in reads), name
        assert old_bytes <= sum(r["bytes"] for r in reads) <= 1.6 * old_bytes, (name, reads, old_bytes)


def test_background_save_writes_the_same_checkpoints(cfg, tmp_path):
    """One process, 5 steps, a checkpoint every 2: shards written in the background give the same files (and
    the same losses) as written in the foreground; the last one is complete when training returns."""
    runs = {}
    for mode in (False, True):
        run_cfg = cfg | {"train": cfg["train"] | {"checkpoint_format": "sharded", "async_checkpoint": mode,
                                                  "ckpt_every": 2}}
        runs[mode] = tmp_path / str(mode)
        train_stage(config_from_dict(run_cfg), runs[mode], env=ONE)
    assert [p.name for p in list_checkpoints(runs[True])] == [p.name for p in list_checkpoints(runs[False])]
    assert _losses(runs[True]) == _losses(runs[False])
    a, _ = load_checkpoint(latest_checkpoint(runs[False]))
    b, _ = load_checkpoint(latest_checkpoint(runs[True]))
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert all(torch.equal(a.optim_tensors[k], b.optim_tensors[k]) for k in a.optim_tensors)


def test_background_save_needs_sharded_checkpoints(cfg):
    with pytest.raises(FlmError, match="train.async_checkpoint writes shards in the background"):
        config_from_dict(cfg | {"train": cfg["train"] | {"async_checkpoint": True}})


def test_export_reads_a_sharded_checkpoint(runs, tmp_path):
    """An exporter given a sharded checkpoint streams its shards like a full checkpoint's file: same output."""
    _, cut = runs
    folder = latest_checkpoint(cut)
    full = tmp_path / "full"
    assert main(["checkpoint", "consolidate", str(folder), str(full), "--no-progress"]) == 0
    for src, out in ((folder, tmp_path / "from_shards"), (full, tmp_path / "from_full")):
        assert main(["export", "hf", str(src), str(out)]) == 0
    a, b = (tmp_path / "from_shards" / "model.safetensors"), (tmp_path / "from_full" / "model.safetensors")
    assert a.read_bytes() == b.read_bytes()
