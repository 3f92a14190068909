"""`flm train` / `flm run` / `flm plot` arguments: the help each command gives about its config."""

from __future__ import annotations

from pathlib import Path

import pytest

from flm.cli import build_parser, main
from flm.config import check_training_source, load_config

REPO = Path(__file__).resolve().parents[2]


def _config_help(command: str) -> str:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    help_text = sub.choices[command].format_help()
    return " ".join(help_text.split())


def test_run_describes_a_config_with_stages_and_train_one_without():
    run = _config_help("run")
    assert "whose [[stages]] give the growth plan" in run and "without [[stages]], e.g." not in run
    assert "--set 'stages=[]'" not in run
    assert "run config (TOML) without [[stages]]" in _config_help("train")


@pytest.mark.parametrize("argv", [["run", "configs/flm-101b.toml"], ["train", "{empty}"], ["run", "{empty}"],
                                  ["plan", "search", "{empty}"]])
def test_a_config_that_names_no_training_data_refuses_to_train(argv, tmp_path, capsys, monkeypatch):
    """Any config without data.train (FLM-101B's has none: its corpus is not public) is refused by every
    command that trains, naming the key, before anything is written; the bundled corpus must be named."""
    monkeypatch.chdir(REPO)
    empty = tmp_path / "empty.toml"
    empty.write_text('[data]\nvalid = [{ path = "data/pd-english/valid.jsonl.gz" }]\n')
    out = tmp_path / "out"
    assert main([a.replace("{empty}", str(empty)) for a in argv] + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "names no training data (data.train is unset)" in err and len(err.splitlines()) == 1
    assert "data/pd-english/train.jsonl.gz" in err and not out.exists()


def test_shipped_demo_configs_name_their_corpus():
    for name in ("demo", "demo-3d", "demo-unified", "data-rich"):
        cfg = load_config(REPO / "configs" / f"{name}.toml")
        check_training_source(cfg, name)  # raises if a demo relied on the default corpus
        assert cfg.data.train[0].path == "data/pd-english/train.jsonl.gz"
