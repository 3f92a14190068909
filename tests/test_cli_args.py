"""The arguments the commands share: config + --set, number parsers, commands documented by their handler."""

from __future__ import annotations

import argparse

import pytest

from flm.cli_args import (
    add_command,
    add_command_group,
    add_config_args,
    floats,
    load_run_config,
    positive,
    positive_ints,
)
from flm.config import RunConfig, dump_toml
from flm.errors import FlmError


def _parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    add_config_args(p, "the config", **kw)
    return p


def test_config_and_set_are_parsed_and_loaded(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(RunConfig(name="x")))
    args = _parser().parse_args([str(path), "--set", "train.steps=170", "--set", "name='y'"])
    assert args.overrides == ["train.steps=170", "name='y'"]
    cfg = load_run_config(args)
    assert (cfg.name, cfg.train.steps) == ("y", 170)
    with pytest.raises(SystemExit):  # the config is required unless optional
        _parser().parse_args([])
    defaults = _parser(optional=True).parse_args(["--set", "train.steps=300"])
    assert defaults.config is None and load_run_config(defaults).train.steps == 300
    assert load_run_config(_parser(optional=True).parse_args([])) == RunConfig()


def test_set_example_shows_in_help():
    assert "--set cost.n_gpus=64" in " ".join(_parser(example="cost.n_gpus=64").format_help().split())


def test_a_bad_set_value_names_the_set_not_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(RunConfig()))
    args = _parser().parse_args([str(path), "--set", "train.steps=-1"])
    with pytest.raises(FlmError, match=r"^--set train.steps=-1: train.steps: Input should be greater than 0"):
        load_run_config(args)
    path.write_text("[train]\nsteps = -1\n")
    with pytest.raises(FlmError, match=rf"^{path}: train.steps"):  # the file's own mistake names the file
        load_run_config(_parser().parse_args([str(path), "--set", "train.batch_size=2"]))


def test_number_parsers():
    assert floats("1e-3, 2") == [1e-3, 2.0]
    assert positive_ints("32,64") == [32, 64]
    assert positive("0.5") == 0.5
    for parse, bad in ((floats, "a,b"), (floats, ","), (positive_ints, "32,0"), (positive_ints, "1.5"),
                       (positive, "-1"), (positive, "x")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def _hello(args: argparse.Namespace) -> int:
    """say hello
    to the world

    Print a greeting. The description
    spans lines.
    """
    return 7


def test_a_command_takes_help_and_description_from_its_handler(capsys):
    top = argparse.ArgumentParser(prog="t")
    sub = top.add_subparsers(dest="command")
    p = add_command(sub, "hello", _hello)
    assert p.description.split() == "Print a greeting. The description spans lines.".split()
    assert "say hello to the world" in top.format_help()
    args = top.parse_args(["hello"])
    assert args.func(args) == 7
    group = add_command_group(sub, "tools", help="some tools", description="Tools.")
    add_command(group, "hi", _hello, help="override")
    args = top.parse_args(["tools"])
    assert args.func(args) == 2 and "usage: t tools" in capsys.readouterr().out
    assert top.parse_args(["tools", "hi"]).func is _hello
