"""User mistakes across commands: one error line, exit code 2, nothing half-written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from flm.cli import main
from flm.config import config_from_dict, dump_toml
from flm.data.prepare import prepare_data
from flm.io import atomic_write


def _err(capsys) -> str:
    return capsys.readouterr().err.strip()


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe[model]\n")
    for cmd in ("run", "train", "cost"):
        assert main([cmd, str(bad)]) == 2
        err = _err(capsys)
        assert "not UTF-8" in err and len(err.splitlines()) == 1


def test_an_output_path_that_cannot_be_written_is_one_line(tiny_cfg, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(dump_toml(config_from_dict(tiny_cfg(steps=2))))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    a_file = tmp_path / "c.toml"
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "run"), "--out", str(a_file / "x.png")]) == 2
    err = _err(capsys)
    assert "cannot use" in err and str(a_file) in err and len(err.splitlines()) == 1


def test_mup_coord_check_refuses_a_non_positive_lr(tiny_cfg, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(dump_toml(config_from_dict(tiny_cfg())))
    try:
        main(["mup", "coord-check", str(cfg), "--lr", "-1"])
    except SystemExit as e:  # argparse: usage line + error, exit 2
        assert e.code == 2
    else:
        raise AssertionError("--lr -1 was accepted")
    assert "must be > 0" in _err(capsys)


def test_a_damaged_cached_shard_is_prepared_again(tiny_cfg, capsys):
    data = config_from_dict(tiny_cfg()).data
    first = prepare_data(data, progress=False)
    shard = first.sources("train")[0].shards[0].path
    good = shard.read_bytes()
    shard.write_bytes(good[:1000])
    again = prepare_data(data, progress=False)
    assert not again.reused and "damaged" in _err(capsys)
    assert shard.read_bytes() == good


def test_flm_train_without_validation_data_fails_before_writing(tiny_cfg, tmp_path, capsys):
    d = tiny_cfg(steps=2)
    d["data"] = {**d["data"], "valid": []}
    cfg = tmp_path / "c.toml"
    cfg.write_text(dump_toml(config_from_dict(d)))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "train.eval_every = 0" in _err(capsys)
    assert not (tmp_path / "run" / "config.toml").exists()
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--set", "train.eval_every=0"]) == 0


def test_atomic_writes_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(Path(tmp_path / "f.txt").stat().st_mode) == 0o644


DEMO = str(Path(__file__).parents[1] / "configs" / "demo.toml")


def test_set_indexes_lists_and_flm_run_refuses_an_unused_train_steps(capsys):
    from flm.config import load_config

    cfg = load_config(DEMO, ["stages[0].steps=5", "stages.1.steps=7", "stages[2].grow.ramp_steps=3"])
    assert [st.steps for st in cfg.stages][:2] == [5, 7] and cfg.stages[2].grow.ramp_steps == 3
    for bad, needle in (("stages[5].steps=3", "not an index of a list of 3"), ("model.d_model.x=1", "not a table")):
        assert main(["run", DEMO, "--set", bad, "--out", "/nonexistent/x"]) == 2
        assert needle in _err(capsys)
    assert main(["run", DEMO, "--set", "train.steps=5", "--out", "/nonexistent/x"]) == 2
    assert "stages[0].steps" in _err(capsys)


def test_an_unknown_option_gets_the_subcommands_usage(capsys):
    try:
        main(["train", DEMO, "--stpes", "5"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("an unknown option was accepted")
    err = _err(capsys)
    assert err.startswith("usage: flm train") and "--stpes 5" in err and "--set train.steps=50" in err


def test_a_bad_set_value_is_blamed_on_the_set_not_the_file(capsys):
    assert main(["train", DEMO, "--set", "train.steps=-1"]) == 2
    err = _err(capsys)
    assert err.startswith("flm train: error: --set train.steps=-1: train.steps: Input should be greater than 0")
    assert "demo.toml" not in err and len(err.splitlines()) == 1
