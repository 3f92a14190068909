"""scripts/demo.sh run a second time: a finished run prints its report, an unfinished one resumes.

The script runs in a copy of the repository layout whose set-up step does nothing and whose `flm` only
records its arguments, so no training happens; the run folders are built the way `flm run` lays them out.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from flm.config import dump_toml, load_config

REPO = Path(__file__).resolve().parents[1]
FAKE_FLM = '#!/usr/bin/env bash\necho "flm $*" > "$(dirname "$0")/../../flm_args"\n'


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "demo.sh", tmp_path / "scripts" / "demo.sh")
    (tmp_path / "scripts" / "setup_env.sh").write_text("#!/usr/bin/env bash\n")
    flm = tmp_path / ".venv" / "bin" / "flm"
    flm.parent.mkdir(parents=True)
    flm.write_text(FAKE_FLM)
    flm.chmod(0o755)
    return tmp_path


def make_run(folder: Path, stages_done: int, report: bool) -> None:
    """A run folder of the demo plan (three stages) with ``stages_done`` stages checkpointed."""
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(dump_toml(load_config(REPO / "configs" / "demo.toml")))
    for i in range(1, stages_done + 1):
        (folder / f"stage{i}" / "checkpoints" / "step_00000010").mkdir(parents=True)
    if report:
        (folder / "report.md").write_text("# Progressive run report\n\n| stage | ... |\n")


def demo(tree: Path, *args: str) -> tuple[subprocess.CompletedProcess, str | None]:
    res = subprocess.run(
        ["bash", str(tree / "scripts" / "demo.sh"), *args], cwd=tree, capture_output=True, text=True, timeout=60
    )
    flm_args = tree / "flm_args"
    return res, flm_args.read_text().strip() if flm_args.exists() else None


def test_first_run_trains_into_runs_demo(tree):
    res, flm = demo(tree, "--set", "train.seed=1")
    assert res.returncode == 0, res.stderr
    assert flm == "flm run configs/demo.toml --set train.seed=1 --out runs/demo"


def test_second_run_of_a_finished_run_prints_its_report(tree):
    make_run(tree / "runs" / "demo", stages_done=3, report=True)
    res, flm = demo(tree)
    assert res.returncode == 0, res.stderr
    assert flm is None  # nothing trained
    assert res.stdout.startswith("# Progressive run report")
    assert "runs/demo already holds this finished run" in res.stdout
    assert "--out NEW_FOLDER" in res.stdout


@pytest.mark.parametrize("stages_done, report", [(0, False), (2, False), (2, True)])
def test_an_unfinished_run_is_resumed(tree, stages_done, report):
    make_run(tree / "runs" / "demo", stages_done, report)
    res, flm = demo(tree)
    assert res.returncode == 0, res.stderr
    assert flm == "flm run configs/demo.toml --out runs/demo --resume"
    assert "resuming" in res.stderr


@pytest.mark.parametrize("out_args", [["--out", "elsewhere"], ["--out=elsewhere"]])
def test_the_users_out_folder_is_the_one_checked(tree, out_args):
    make_run(tree / "runs" / "demo", stages_done=3, report=True)
    res, flm = demo(tree, *out_args)  # runs/demo is finished, but the user asked for another folder
    assert flm == " ".join(["flm run configs/demo.toml", *out_args])
    (tree / "flm_args").unlink()
    make_run(tree / "elsewhere", stages_done=1, report=False)
    res, flm = demo(tree, *out_args)
    assert flm == " ".join(["flm run configs/demo.toml", *out_args, "--resume"])
    make_run(tree / "finished", stages_done=3, report=True)
    (tree / "flm_args").unlink()
    res, flm = demo(tree, "--out", "finished")
    assert flm is None and "finished already holds this finished run" in res.stdout


@pytest.mark.parametrize("flag", ["--help", "--resume", "--scratch"])
def test_help_resume_and_scratch_go_to_flm_unchanged(tree, flag):
    make_run(tree / "runs" / "demo", stages_done=3, report=True)
    res, flm = demo(tree, flag)
    assert res.returncode == 0, res.stderr
    assert flm == f"flm run configs/demo.toml {flag}"
