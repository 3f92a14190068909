"""A layout the job or the model cannot take stops ``flm train`` / ``flm run`` with one line naming the key and
the fix, exit 2, before anything is written: in one process, and under torchrun on 2 ranks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import tomli_w

from flm.cli import main
from flm.config import tomllib
from tests.conftest import tiny_config_dict

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _write(tmp_path, cfg: dict):
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


@pytest.mark.parametrize(
    ("parallel", "words"),
    [
        ({"tp": 2}, "parallel: pp·tp = 1·2 = 2 does not divide the 1 processes started"),
        ({"dp": 2}, "parallel: pp·dp·tp = 1·2·1 = 2 but 1 processes were started; set parallel.dp = -1"),
    ],
)
def test_layout_that_does_not_fit_one_process(tiny_corpus, prepared_dir, tmp_path, capsys, parallel, words):
    cfg = tiny_config_dict(tiny_corpus, prepared_dir) | {"parallel": parallel}
    out = tmp_path / "out"
    assert main(["train", str(_write(tmp_path, cfg)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and not out.exists()


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "flm.cli", *args],
        env=ENV, timeout=180, capture_output=True, text=True,
    )


def _refused(res: subprocess.CompletedProcess, message: str) -> None:
    """``message`` printed once (by rank 0, speaking for both), and every rank exited 2 by itself: torchrun's
    report lists both ranks' own exit code, and no rank printed a traceback (torchrun's report is its own)."""
    assert res.returncode != 0, res.stderr[-2000:]
    assert res.stderr.count(message) == 1, res.stderr[-3000:]
    assert res.stderr.count(": error: ") == 1, res.stderr[-3000:]
    assert res.stderr.count("exitcode  : 2") == 2, res.stderr[-3000:]
    assert res.stderr.count("Traceback (most recent call last)") <= 1, res.stderr[-3000:]  # torchrun's


def test_model_the_layout_cannot_split_under_torchrun(tiny_corpus, prepared_dir, tmp_path):
    """tp = 2 does not divide 3 heads (flm train); the second stage of a plan asks for pipeline micro-batches
    that do not divide its batch (flm run: refused before the first stage trains)."""
    cfg = tiny_config_dict(tiny_corpus, prepared_dir) | {"parallel": {"tp": 2}}
    cfg["model"] |= {"n_heads": 3, "d_model": 48, "d_ff": 96}
    out = tmp_path / "train"
    res = _torchrun("train", str(_write(tmp_path, cfg)), "--out", str(out))
    _refused(res, "flm train: error: parallel.tp = 2 does not divide model.n_heads = 3: tensor parallelism splits "
             "n_heads evenly; pick parallel.tp from 1, 3 or change n_heads")
    assert not out.exists()

    plan = tiny_config_dict(tiny_corpus, prepared_dir)
    plan["stages"] = [
        {"steps": 2},
        {"steps": 2, "grow": {"d_ff": 192, "ramp_steps": 1}, "parallel": {"pp": 2, "microbatches": 3}},
    ]
    out = tmp_path / "run"
    res = _torchrun("run", str(_write(tmp_path, plan)), "--out", str(out))
    _refused(res, "flm run: error: stages[1].parallel.microbatches = 3 does not divide the batch of 4 sequences per "
             "data-parallel rank")
    assert not out.exists()


def test_resume_into_a_layout_the_model_cannot_take(tiny_corpus, prepared_dir, tmp_path):
    """A run trained in one process (3 heads), resumed under torchrun with tp = 2: refused before anything is
    written; its checkpoints, metrics and config stay as they were."""
    cfg = tiny_config_dict(tiny_corpus, prepared_dir, steps=2)
    cfg["model"] |= {"n_heads": 3, "d_model": 48, "d_ff": 96}
    path, out = _write(tmp_path, cfg), tmp_path / "run"
    assert main(["train", str(path), "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    res = _torchrun("train", str(path), "--out", str(out), "--resume", "--set", "parallel.tp=2")
    _refused(res, "flm train: error: parallel.tp = 2 does not divide model.n_heads = 3")
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_layout_single_runs_a_per_stage_layout_plan_in_one_process(tiny_corpus, prepared_dir, tmp_path, capsys):
    """A plan whose stages set their own layouts (as configs/demo-3d.toml): in one process the error names
    --layout single, and with it every stage trains here, the layouts set aside (also in the run's config)."""
    plan = tiny_config_dict(tiny_corpus, prepared_dir)
    plan["stages"] = [
        {"steps": 2, "parallel": {"dp": 2}},
        {"steps": 2, "grow": {"d_ff": 192, "ramp_steps": 1}, "parallel": {"tp": 2, "dp": 1}},
    ]
    config, out = _write(tmp_path, plan), tmp_path / "run"
    assert main(["run", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stages[0].parallel" in err and "--layout single" in err
    assert not out.exists()
    assert main(["run", str(config), "--out", str(out), "--layout", "single"]) == 0
    saved = tomllib.loads((out / "config.toml").read_text())
    assert all("parallel" not in s for s in saved["stages"]) and saved["parallel"]["tp"] == saved["parallel"]["pp"] == 1
    assert (out / "stage2" / "checkpoints").is_dir()
    assert main(["run", str(config), "--out", str(out), "--layout", "single", "--resume"]) == 0  # same config
