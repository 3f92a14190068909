"""`flm grow` on small checkpoints in the checkpoint.py layout: streamed output, function check, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from flm.checkpoint import CheckpointData, load_checkpoint, save_checkpoint, verify_manifest, write_manifest
from flm.cli import main
from flm.config import GrowthConfig, RunConfig
from flm.growth import grow
from flm.growth.offline import max_logit_delta
from flm.model import FLM

from ._util import generic_model, mup_tiny

SPEC = "d_model=64,d_ff=200,n_layers=3,depth_position=[1],ramp_steps=7"


class _Tok:
    """Stands in for a Tokenizer: only .save(dir) is used by checkpoints."""

    def save(self, folder: Path) -> None:
        (Path(folder) / "tokenizer.json").write_text('{"stub": true}')


def _moments(model: FLM) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for n, p in model.state_dict().items():
        out[f"exp_avg/{n}"] = torch.randn(p.shape, generator=gen)
        out[f"exp_avg_sq/{n}"] = torch.rand(p.shape, generator=gen)
    return out


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    cfg = RunConfig(model=mup_tiny())
    model = generic_model(cfg.model)
    data = CheckpointData(
        model=model.state_dict(),
        optim_tensors=_moments(model),
        optim_meta={"step": 42, "lr": 1e-3},
        trainer={"step": 42, "tokens": 1000, "flops": 1.0, "ramp": None},
        growth={},
        rng={"cpu": torch.get_rng_state()},
    )
    return save_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000042", data, cfg, _Tok())


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_grow_checkpoint_streams_a_complete_grown_checkpoint(ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "grown"
    code, stdout, _ = _run(
        ["grow", str(ckpt), "--to", SPEC, "--out", str(out), "--check", "--seed", "3"], capsys
    )
    assert code == 0, stdout
    delta = float(re.search(r"max \|delta logit\| = (\S+)", stdout).group(1))
    assert delta <= 1e-5
    verify_manifest(out, full=True)  # every file listed, sizes and sha256 right
    data, cfg = load_checkpoint(out)
    assert cfg.model.shape() == {"d_model": 64, "n_layers": 3, "n_heads": 8, "head_dim": 8, "d_ff": 200}
    # the streamed file equals the in-memory operator with the same seed, byte for byte
    old, _ = load_checkpoint(ckpt)
    res = grow(mup_tiny(), old.model, GrowthConfig(d_model=64, d_ff=200, n_layers=3, depth_position=[1]),
               old.optim_tensors, seed=3)  # fmt: skip
    assert set(data.model) == set(res.state_dict)
    assert all(torch.equal(data.model[k], res.state_dict[k]) for k in res.state_dict)
    assert res.optim_state is not None and set(data.optim_tensors) == set(res.optim_state)
    assert all(torch.equal(data.optim_tensors[k], res.optim_state[k]) for k in res.optim_state)
    assert data.optim_meta["step"] == 42  # step count kept
    assert data.trainer["ramp"] == {"step": 0, "total": 7} and data.trainer["tokens"] == 1000
    assert set(data.growth) == set(res.mask_state)
    assert torch.equal(data.rng["cpu"], old.rng["cpu"])
    assert (out / "tokenizer.json").read_text() == '{"stub": true}'
    # safetensors' own reader agrees
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert torch.equal(
            f.get_tensor("blocks.2.mlp.down.weight"), res.state_dict["blocks.2.mlp.down.weight"]
        )
    # the grown checkpoint loads into a model that computes the old function
    assert max_logit_delta(ckpt, out) <= 1e-5


def test_toml_spec_reset_optimizer_and_run_folder(ckpt: Path, tmp_path: Path, capsys) -> None:
    spec = tmp_path / "grow.toml"
    spec.write_text(
        '[grow]\nn_heads = 6\nn_layers = 4\ndepth_position = "interleave"\nreset_optimizer = true\n'
    )
    out = tmp_path / "grown"
    code, stdout, _ = _run(["grow", str(ckpt.parents[1]), "--to", str(spec), "--out", str(out)], capsys)
    assert code == 0
    assert "n_heads 4 -> 6" in stdout and "n_layers 2 -> 4" in stdout
    assert not (out / "optim.safetensors").exists()
    assert json.loads((out / "optim.json").read_text())["step"] == 0
    assert max_logit_delta(ckpt, out) <= 1e-5


def test_dcp_model_is_read_tensor_by_tensor(ckpt: Path, tmp_path: Path, capsys) -> None:
    import torch.distributed.checkpoint as dcp

    src = tmp_path / "dcp_ckpt"
    src.mkdir()
    state = load_checkpoint(ckpt)[0].model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=str(src / "model"), no_dist=True)
    (src / "config.toml").write_text((ckpt / "config.toml").read_text())
    write_manifest(src)
    out = tmp_path / "grown"
    code, _, _ = _run(["grow", str(src), "--to", "d_model=48", "--out", str(out), "--format", "full"], capsys)
    assert code == 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("blocks.1.attn.q.weight")[:32, :32], state["blocks.1.attn.q.weight"])
    assert max_logit_delta(ckpt, out) <= 1e-5


def _one_error_line(code: int, err: str, match: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flm grow: error:"), err
    assert re.search(match, lines[0]), lines[0]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("d_model=16", r"smaller than the current 32"),
        ("n_layers=1", r"smaller than the current 2"),
        ("d_model=36", r"not a multiple of head_dim 8"),
        ("d_modle=64", r"unknown key 'd_modle'.*did you mean 'd_model'"),
        ("d_model", r"not KEY=VALUE"),
        ("n_layers=4,depth_position=[0,0]", r"distinct block indices"),
        ("missing.toml", r"file not found"),
    ],
)
def test_bad_specs_exit_2_with_one_line(ckpt: Path, tmp_path: Path, capsys, spec: str, match: str) -> None:
    code, _, err = _run(["grow", str(ckpt), "--to", spec, "--out", str(tmp_path / "o")], capsys)
    _one_error_line(code, err, match)
    assert not (tmp_path / "o").exists()


def test_config_that_does_not_match_its_tensors(ckpt: Path, tmp_path: Path, capsys) -> None:
    text = (ckpt / "config.toml").read_text()
    (ckpt / "config.toml").write_text(text.replace("d_ff = 128", "d_ff = 96"))
    write_manifest(ckpt)  # a hand-edited checkpoint, its manifest made anew: the shapes are what trips it
    code, _, err = _run(["grow", str(ckpt), "--to", "d_model=64", "--out", str(tmp_path / "o")], capsys)
    _one_error_line(code, err, r"tensor blocks\.0\.mlp\.up\.weight has shape \(128, 32\).*needs \(96, 32\)")


def test_mid_ramp_checkpoint_and_existing_out_are_refused(ckpt: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _run(["grow", str(ckpt), "--to", "d_model=64", "--out", str(ckpt)], capsys)
    _one_error_line(code, err, "already exists")
    save_file({"grow_m": torch.zeros(())}, str(ckpt / "growth.safetensors"))
    code, _, err = _run(["grow", str(ckpt), "--to", "d_model=64", "--out", str(tmp_path / "o")], capsys)
    _one_error_line(code, err, "middle of a growth ramp")


def test_exit_code_from_the_command_line(ckpt: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flm.cli",
            "grow",
            str(ckpt),
            "--to",
            "d_model=16",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "smaller than" in proc.stderr
