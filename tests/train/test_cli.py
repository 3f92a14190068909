"""`flm train` / `flm run` / `flm plot` arguments: the help each command gives about its config."""

from __future__ import annotations

from flm.cli import build_parser


def _config_help(command: str) -> str:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    help_text = sub.choices[command].format_help()
    return " ".join(help_text.split())


def test_run_describes_a_config_with_stages_and_train_one_without():
    run = _config_help("run")
    assert "whose [[stages]] give the growth plan" in run and "without [[stages]], e.g." not in run
    assert "--set 'stages=[]'" not in run
    assert "run config (TOML) without [[stages]]" in _config_help("train")
