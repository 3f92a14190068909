"""Training whose output goes to a log (stdout a pipe, as in a batch job): plain progress lines as it goes, and
each growth announced."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.train.test_distributed import ENV, write_cfg


def test_a_log_gets_plain_progress_lines_and_each_growth(tiny_cfg, tmp_path):
    cfg = tiny_cfg(progress=True, ckpt_every=4, eval_every=0)
    cfg["stages"] = [{"steps": 4}, {"steps": 4, "grow": {"d_model": 64, "ramp_steps": 2}}]
    path = write_cfg(tmp_path / "plan.toml", cfg)
    env = {**ENV, "FLM_PROGRESS_SECONDS": "0"}  # a line at every step (default: every 30 s)
    env.pop("PYTHONUNBUFFERED")  # a pipe is block-buffered: the lines must be flushed as they go
    res = subprocess.run([sys.executable, "-m", "flm.cli", "run", str(path), "--out", str(tmp_path / "run")],
                         env=env, timeout=300, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    step = re.compile(r"^step (\d)/4 stage (\d) loss \d+\.\d+ val \d+\.\d+ [\d,]+ tok/s \| \d:\d\d:\d\d elapsed"
                      r"(, ETA \d:\d\d:\d\d)?$")
    seen = [(int(m.group(2)), int(m.group(1)), m.group(3) is not None) for m in map(step.match, lines) if m]
    etas = [(stage, s, s < 4) for stage in (1, 2) for s in (1, 2, 3, 4)]  # an ETA until the last step
    assert seen == etas, res.stdout
    grown = [i for i, line in enumerate(lines) if line.startswith("stage 2: grown to d_model 64, n_layers 2")]
    assert len(grown) == 1 and "\x1b" not in res.stdout and "\r" not in res.stdout
