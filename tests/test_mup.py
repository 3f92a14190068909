"""μP: the rules per parameter, the coordinate check, and μP surviving compile, FSDP2, checkpoints and
growth."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch
import torch.nn.functional as F

from flm import mup
from flm.config import GrowthConfig, ModelConfig
from flm.errors import FlmError
from flm.model import FLM
from flm.scaling import coord_check

HIDDEN = (
    "attn.q.weight",
    "attn.k.weight",
    "attn.v.weight",
    "attn.o.weight",
    "mlp.up.weight",
    "mlp.down.weight",
)


def small_cfg(d_model: int = 64, base: int | None = 64, **kw) -> ModelConfig:
    data = dict(vocab_size=256, d_model=d_model, n_layers=2, n_heads=d_model // 16, max_seq_len=32)
    data.update(kw)
    return ModelConfig(mup_base_width=base, **data)


def batch(seed: int, b: int = 4, t: int = 32, vocab: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, vocab, (b, t + 1), generator=torch.Generator().manual_seed(seed))
    return x[:, :-1], x[:, 1:]


def lm_loss(model: torch.nn.Module, xy: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = xy
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def by_name(groups: list[dict]) -> dict[str, tuple[float, float]]:
    return {mup.canonical_name(n): (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["names"]}


# ----- the rules ------------------------------------------------------------------------------------


def test_rules_scale_hidden_matrices_by_fan_in():
    cfg = small_cfg(256, base=64)  # width_mult 4
    assert cfg.width_mult == 4 and cfg.attn_scale == "linear"
    for suffix in HIDDEN:
        name = f"blocks.1.{suffix}"
        assert mup.fan_in_mult(cfg, name) == 4
        assert mup.lr_scale(cfg, name) == 0.25
        assert mup.weight_decay_scale(cfg, name) == 4  # lr * wd stays width-independent
        depth = math.sqrt(2 * cfg.n_layers) if suffix in ("attn.o.weight", "mlp.down.weight") else 1.0
        assert mup.init_std(cfg, name) == pytest.approx(cfg.init_std / 2 / depth)
    # embedding (input and tied readout): width-independent init and LR; readout multiplier 1/width_mult
    assert mup.init_std(cfg, "tok_emb.weight") == cfg.init_std
    assert mup.lr_scale(cfg, "tok_emb.weight") == 1 and mup.weight_decay_scale(cfg, "tok_emb.weight") == 1
    assert FLM(cfg).readout_mult == pytest.approx(cfg.output_mult / 4)
    for name in ("blocks.0.attn.q.bias", "blocks.0.ln1.weight", "ln_f.bias"):
        assert mup.lr_scale(cfg, name) == 1 and mup.weight_decay_scale(cfg, name) == 0


def test_rules_follow_each_matrix_fan_in_not_only_d_model():
    # a grown FFN changes only the matrix whose fan-in grew (down); a grown head count only o
    cfg = small_cfg(128, base=64, d_ff=1024, n_heads=16, head_dim=16)  # attn_dim 256, d_ff = 8 * d_model
    assert mup.fan_in_mult(cfg, "blocks.0.attn.q.weight") == 2
    assert mup.fan_in_mult(cfg, "blocks.0.mlp.up.weight") == 2
    assert mup.fan_in_mult(cfg, "blocks.0.attn.o.weight") == 256 / 64
    assert mup.fan_in_mult(cfg, "blocks.0.mlp.down.weight") == 1024 / (4 * 64)


def test_standard_parameterization_has_unit_multipliers():
    cfg = small_cfg(256, base=None)
    assert cfg.attn_scale == "sqrt" and FLM(cfg).readout_mult == cfg.output_mult
    for row in mup.rules_table(cfg):
        assert row["lr_scale"] == 1 and row["fan_in_mult"] == 1


def test_param_groups_carry_the_rules():
    cfg = small_cfg(256, base=64)
    model = FLM(cfg)
    groups = mup.param_groups(model, lr=1e-2, weight_decay=0.1)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    for g in groups:
        assert g["lr"] == pytest.approx(1e-2 * g["lr_scale"]) and len(g["names"]) == len(g["params"])
        for name, p in zip(g["names"], g["params"]):
            assert p is dict(model.named_parameters())[name]
            assert g["lr_scale"] == mup.lr_scale(cfg, name)
            assert g["weight_decay"] == pytest.approx(0.1 * mup.weight_decay_scale(cfg, name))
            assert (g["weight_decay"] == 0) == (p.ndim == 1)
    scales = by_name(groups)
    assert scales["blocks.0.mlp.down.weight"] == (0.25, pytest.approx(0.4))
    assert scales["tok_emb.weight"] == (1.0, pytest.approx(0.1))


@pytest.mark.parametrize("base", [64, None])
def test_init_matches_the_rules(base):
    cfg = small_cfg(256, base=base, n_layers=3)
    torch.manual_seed(0)
    model = FLM(cfg)
    for name, p in model.named_parameters():
        if p.ndim == 2:
            assert p.std().item() == pytest.approx(mup.init_std(cfg, name), rel=0.03), name
        else:
            assert torch.all(p == (1.0 if name.endswith(".weight") else 0.0)), name


def test_with_width_adds_heads_at_fixed_head_dim():
    cfg = small_cfg(64, base=64)
    wide = mup.with_width(cfg, 512)
    assert (wide.d_model, wide.n_heads, wide.head_dim, wide.d_ff) == (512, 32, 16, 2048)
    assert wide.mup_base_width == 64 and wide.init_std == cfg.init_std
    sp = mup.with_width(cfg, 512, mup=False)
    assert sp.mup_base_width is None and sp.attn_scale == "sqrt"
    with pytest.raises(FlmError, match="multiple of model.head_dim"):
        mup.with_width(cfg, 72)


# ----- coordinate check -----------------------------------------------------------------------------


def test_coord_check_is_flat_under_mup_and_grows_under_sp():
    cfg = small_cfg(64, base=64, max_seq_len=64)
    gen = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 256, (8, 65), generator=gen) for _ in range(4)]
    records = coord_check.coord_check(
        cfg, [64, 512], lambda s: (data[s][:, :-1], data[s][:, 1:]), steps=3, lr=3e-3
    )  # fmt: skip
    mu, sp = coord_check.width_ratios(records, 3, "mup"), coord_check.width_ratios(records, 3, "sp")
    assert len(mu) == 1 + 5 * cfg.n_layers + 2  # embed, 5 points per block, ln_f, logits
    for layer, ratio in mu.items():
        assert 0.5 < ratio < 2.0, f"μP: {layer} changes {ratio:.2f}x from width 64 to 512"
    width_dependent = {
        k: v for k, v in sp.items() if k not in ("embed", "ln_f")
    }  # normalised: flat in SP too
    assert min(width_dependent.values()) > 2.0, sp
    assert sorted(width_dependent.values())[len(width_dependent) // 2] > 4.0, sp


# ----- μP survives wrappers, sharding, checkpoints and growth -----------------------------------------


def test_param_groups_survive_compile_and_wrapper_names():
    model = FLM(small_cfg(128))
    expected = by_name(mup.param_groups(model, 1e-3, 0.1))
    compiled = torch.compile(model)  # lazy: nothing is compiled until it runs
    assert all(n.startswith("_orig_mod.") for n, _ in compiled.named_parameters())
    assert by_name(mup.param_groups(compiled, 1e-3, 0.1)) == expected
    wrapped = types.SimpleNamespace(
        cfg=model.cfg,
        named_parameters=lambda: (
            (n.replace("attn.", "attn._checkpoint_wrapped_module."), p) for n, p in model.named_parameters()
        ),
    )
    assert by_name(mup.param_groups(wrapped, 1e-3, 0.1)) == expected


FSDP_SCRIPT = textwrap.dedent(
    """
    import os, socket, sys
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from flm import mup
    from flm.config import ModelConfig
    from flm.model import FLM

    def run(rank, world, port):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=32,
                          mup_base_width=32)
        torch.manual_seed(0)
        ref = FLM(cfg)
        torch.manual_seed(0)
        model = FLM(cfg)
        mesh = init_device_mesh("cpu", (world,))
        for block in model.blocks.values():
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        assert all(isinstance(p, DTensor) for p in model.parameters())
        groups = [mup.param_groups(m, 1e-2, 0.1) for m in (ref, model)]
        keys = [sorted((n, g["lr_scale"], g["weight_decay"]) for g in gs for n in g["names"])
                for gs in groups]
        assert keys[0] == keys[1], "FSDP2 changed the μP groups"
        x = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(1))
        for m, gs in zip((ref, model), groups):
            opt = torch.optim.AdamW(gs, lr=1e-2)
            for _ in range(2):
                F.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
                opt.step()
                opt.zero_grad()
        full = {n: p.full_tensor() for n, p in model.named_parameters()}
        err = max((full[n] - p).abs().max().item() for n, p in ref.named_parameters())
        assert err < 1e-5, err
        dist.destroy_process_group()

    if __name__ == "__main__":
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        mp.spawn(run, args=(2, port), nprocs=2)
        print("FSDP2 OK")
    """
)


def test_param_groups_survive_fsdp2(tmp_path):
    script = tmp_path / "fsdp_mup.py"
    script.write_text(FSDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and "FSDP2 OK" in out.stdout, out.stderr[-3000:]


def _adamw_steps(
    model: torch.nn.Module, groups: list[dict], steps: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Per-parameter update ΔW after ``steps`` AdamW steps on fixed batches."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95))
    for s in range(steps):
        lm_loss(model, batch(seed + s)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_mup_survives_a_checkpoint_round_trip(tmp_path):
    from flm.checkpoint import CheckpointData, load_checkpoint, save_checkpoint
    from flm.config import RunConfig
    from flm.growth.ramp import grow_model

    # a μP model in the middle of a width-growth ramp: the readout multiplier is interpolated
    torch.manual_seed(0)
    small = FLM(small_cfg(64))
    grown = grow_model(small, GrowthConfig(d_model=128, d_ff=512, ramp_steps=4)).model
    grown.set_mask_value(0.5)
    opt = torch.optim.AdamW(mup.param_groups(grown, 1e-2, 0.1), lr=1e-2)
    lm_loss(grown, batch(0)).backward()
    opt.step()
    opt.zero_grad()
    moments = {
        f"{k}/{n}": opt.state[p][k].clone()
        for g in opt.param_groups
        for n, p in zip(g["names"], g["params"])
        for k in ("exp_avg", "exp_avg_sq")
    }
    cfg = RunConfig(model=grown.cfg)
    data = CheckpointData(
        model={k: v.clone() for k, v in grown.state_dict().items()},
        optim_tensors=moments,
        optim_meta={"step": 1},
        trainer={},
        growth=grown.growth_state(),
        rng={},
    )
    save_checkpoint(tmp_path / "ckpt", data, cfg, None)

    loaded, loaded_cfg = load_checkpoint(tmp_path / "ckpt")
    back = FLM(loaded_cfg.model)
    back.load_state_dict(loaded.model)
    back.load_growth_state(loaded.growth)
    assert back.cfg.mup_base_width == 64 and back.cfg.width_mult == 2
    assert by_name(mup.param_groups(back, 1e-2, 0.1)) == by_name(mup.param_groups(grown, 1e-2, 0.1))
    x, _ = batch(5)
    with torch.no_grad():
        torch.testing.assert_close(back(x), grown(x), rtol=0, atol=0)

    groups = mup.param_groups(back, 1e-2, 0.1)
    opt_back = torch.optim.AdamW(groups, lr=1e-2)
    for g in groups:
        for n, p in zip(g["names"], g["params"]):
            opt_back.state[p] = {
                "step": torch.tensor(1.0),
                "exp_avg": loaded.optim_tensors[f"exp_avg/{n}"],
                "exp_avg_sq": loaded.optim_tensors[f"exp_avg_sq/{n}"],
            }
    for model, o in ((grown, opt), (back, opt_back)):
        lm_loss(model, batch(1)).backward()
        o.step()
    for (n, a), (_, b) in zip(grown.named_parameters(), back.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)


def test_grown_model_follows_the_mup_rules_of_its_new_width():
    from flm.growth.ramp import grow_model

    torch.manual_seed(0)
    small = FLM(small_cfg(128))
    # readout = "mup": the new width's readout multiplier too (the default keeps the old one, flm.config.GrowthConfig)
    grown = grow_model(small, GrowthConfig(d_model=256, d_ff=1024, n_heads=16, ramp_steps=10, readout="mup")).model
    grown.end_growth()  # after the ramp: the grown model is a plain width-256 model
    torch.manual_seed(1)
    fresh = FLM(small_cfg(256))
    assert grown.cfg == fresh.cfg

    def update_rms(model: FLM, groups: list[dict]) -> dict[str, float]:
        deltas = _adamw_steps(model, groups, steps=3)
        return {n: d.pow(2).mean().sqrt().item() for n, d in deltas.items() if d.ndim == 2}

    fresh_upd = update_rms(fresh, mup.param_groups(fresh, 1e-2, 0.1))
    state = {k: v.clone() for k, v in grown.state_dict().items()}
    grown_upd = update_rms(grown, mup.param_groups(grown, 1e-2, 0.1))
    for name, size in fresh_upd.items():
        assert grown_upd[name] == pytest.approx(size, rel=0.10), name

    # control: keeping the groups of the old width (not rebuilding them) gives 2x the hidden updates
    grown.load_state_dict(state)
    stale = types.SimpleNamespace(cfg=small.cfg, named_parameters=grown.named_parameters)
    stale_upd = update_rms(grown, mup.param_groups(stale, 1e-2, 0.1))
    ratios = [stale_upd[n] / fresh_upd[n] for n in fresh_upd if mup.param_kind(n) == "hidden"]
    assert min(ratios) > 1.6, ratios
