"""`flm mup coord-check`: the widths it compares, the setups it refuses, the batches, the verdict, the files."""

from __future__ import annotations

import json

import pytest
import torch

from flm.cli import main
from flm.config import config_from_dict, dump_toml
from flm.errors import FlmError
from flm.scaling import coord_check

MUP = {"model": {"vocab_size": 256, "d_model": 32, "n_layers": 1, "n_heads": 2, "mup_base_width": 32}}


def test_default_widths_double_from_the_first_head_multiple_above_64():
    assert coord_check.default_widths(16) == [64, 128, 256, 512]
    assert coord_check.default_widths(48) == [96, 192, 384, 768]


def test_setups_that_cannot_run_are_refused():
    cfg = config_from_dict(MUP)
    shape = {"steps": 2, "batch_size": 2, "seq_len": 16}
    assert coord_check.check_setup(cfg, [64, 32], **shape) == [32, 64]
    assert coord_check.check_setup(cfg, None, **shape) == coord_check.default_widths(cfg.model.head_dim)
    for widths, bad, needle in (
        ([32], {}, "at least two widths"),
        (None, {"steps": 0}, "--steps and --batch-size must be >= 1"),
        (None, {"seq_len": 4096}, "exceeds model.max_seq_len"),
    ):
        with pytest.raises(FlmError, match=needle):
            coord_check.check_setup(cfg, widths, **{**shape, **bad})
    with pytest.raises(FlmError, match="needs model.mup_base_width"):
        coord_check.check_setup(config_from_dict({}), None, **shape)


def test_random_batches_are_seeded_and_shared_by_every_step_call():
    cfg = config_from_dict(MUP)
    a = coord_check.coord_batches(cfg, "random", steps=2, batch_size=3, seq_len=8, seed=1)
    b = coord_check.coord_batches(cfg, "random", steps=2, batch_size=3, seq_len=8, seed=1)
    x, y = a(2)
    assert x.shape == (3, 8) and torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    assert torch.equal(x, b(2)[0]) and not torch.equal(x, a(1)[0])


def test_the_verdict_leaves_the_logits_out():
    stds = {  # (parameterization, layer) -> std at widths 32 and 64
        ("mup", "embed"): (1.0, 1.5), ("mup", "logits"): (0.1, 0.025),
        ("sp", "embed"): (1.0, 8.0), ("sp", "logits"): (0.1, 0.8),
    }  # fmt: skip
    records = [
        coord_check.CoordRecord(par, width, 1, layer, std[i])
        for (par, layer), std in stds.items()
        for i, width in enumerate((32, 64))
    ]
    summary = coord_check.summarize(records, 1)
    assert summary.ratios["sp"]["embed"] == pytest.approx(8.0)
    assert summary.ratios["mup"]["logits"] == pytest.approx(0.25)
    assert summary.worst_hidden == pytest.approx(1.5) and summary.flat  # logits shrank 4x: not judged
    records[1] = coord_check.CoordRecord("mup", 64, 1, "embed", 0.4)  # hidden activations 2.5x smaller: not flat
    assert not coord_check.summarize(records, 1).flat


def test_coord_check_cli_writes_json_and_png(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(config_from_dict(MUP)))
    out = tmp_path / "cc"
    argv = ["mup", "coord-check", str(path), "--widths", "32,64", "--steps", "2", "--data", "random"]
    assert main([*argv, "--seq-len", "16", "--out", str(out)]) == 0
    data = json.loads((out / "coord_check.json").read_text())
    assert data["widths"] == [32, 64]
    layers = 1 + 5 + 2
    assert len(data["records"]) == 2 * 2 * 3 * layers  # parameterizations x widths x steps 0..2 x layers
    assert (out / "coord_check.png").stat().st_size > 10_000
    assert "flat (within 2x)" in capsys.readouterr().out
    (tmp_path / "sp.toml").write_text(dump_toml(config_from_dict({})))
    assert main(["mup", "coord-check", str(tmp_path / "sp.toml")]) == 2
    assert "mup_base_width" in capsys.readouterr().err
