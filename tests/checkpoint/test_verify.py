"""Integrity: every checkpoint file is checked against the manifest by `flm checkpoint verify` and by every
command that loads a checkpoint; a flipped byte anywhere is caught, naming the file and the checkpoint before."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from flm.checkpoint import MANIFEST, load_model, verify_manifest
from flm.cli import main
from flm.config import config_from_dict
from flm.errors import FlmError
from flm.train.loop import train_stage


@pytest.fixture(scope="module")
def run(tiny_corpus, prepared_dir, tmp_path_factory) -> Path:
    from tests.conftest import tiny_config_dict

    out = tmp_path_factory.mktemp("verify") / "run"
    train_stage(config_from_dict(tiny_config_dict(tiny_corpus, prepared_dir, steps=4, ckpt_every=2, keep_last=2)), out)
    return out


def _flip(path: Path, pos: int, mask: int) -> None:
    with path.open("r+b") as f:
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ mask]))


def test_one_flipped_byte_anywhere_is_caught_naming_the_file_and_the_checkpoint_before(run: Path) -> None:
    ckpt, earlier = run / "checkpoints" / "step_00000004", run / "checkpoints" / "step_00000002"
    files = sorted(p for p in ckpt.rglob("*") if p.is_file())
    assert len(files) >= 8 and any(p.name == MANIFEST for p in files)
    verify_manifest(ckpt)
    rng, caught = random.Random(16), 0
    for _ in range(100):
        path = rng.choice(files)  # every file gets its share, the small ones too
        pos, mask = rng.randrange(path.stat().st_size), rng.randrange(1, 256)
        _flip(path, pos, mask)
        try:
            verify_manifest(ckpt)
        except FlmError as e:
            caught += path.name in str(e) and str(earlier) in str(e) and "\n" not in str(e)
        finally:
            _flip(path, pos, mask)  # back as it was
    assert caught == 100
    verify_manifest(ckpt)


def test_verify_command_and_loaders_refuse_a_corrupt_checkpoint(run: Path, tmp_path: Path, capsys) -> None:
    assert main(["checkpoint", "verify", str(run)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {run / 'checkpoints' / 'step_00000004'}: ")
    bad = tmp_path / "bad"
    shutil.copytree(run / "checkpoints" / "step_00000004", bad)
    _flip(bad / "model.safetensors", (bad / "model.safetensors").stat().st_size - 10, 1)  # a weight, not the header
    assert main(["checkpoint", "verify", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors fails its sha256 check" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(FlmError, match="sha256"):  # flm generate, flm eval
        load_model(bad)
    assert main(["grow", str(bad), "--to", "n_layers=3", "--out", str(tmp_path / "grown"), "--no-progress"]) == 2
    assert "fails its sha256 check" in capsys.readouterr().err and not (tmp_path / "grown").exists()
