"""`flm train --init CKPT` and the tokenizer: a config that names none takes the checkpoint's own; one that names
another is refused, naming both (before any BPE is trained when that is known, else once the data is prepared);
a model imported with `flm import hf` trains on from its imported config with no tokenizer setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

from flm.checkpoint import latest_checkpoint, read_config
from flm.cli import main
from flm.data.prepare import prepare_data
from flm.data.tokenizer import load_tokenizer
from tests.conftest import tiny_config_dict

STEPS = ["--set", "train.steps=2", "--set", "optim.warmup_steps=1"]


@pytest.fixture(scope="module")
def world(tiny_corpus, prepared_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(tiny.toml, the checkpoint of a 1-step run trained with it)."""
    root = tmp_path_factory.mktemp("init_tok")
    cfg = tiny_config_dict(tiny_corpus, prepared_dir, steps=1, eval_every=0)
    cfg["optim"]["warmup_steps"] = 1
    (root / "tiny.toml").write_text(tomli_w.dumps(cfg))
    assert main(["train", str(root / "tiny.toml"), "--out", str(root / "run")]) == 0
    return root / "tiny.toml", latest_checkpoint(root / "run")


def _without_tokenizer(toml: Path, out: Path) -> Path:
    cfg = read_config(toml).model_dump(mode="json", exclude_none=True)
    del cfg["data"]["tokenizer"]
    del cfg["stages"]
    out.write_text(tomli_w.dumps(cfg))
    return out


def test_a_config_without_tokenizer_uses_the_checkpoints(world, tmp_path, capsys):
    toml, ckpt = world
    bare = _without_tokenizer(toml, tmp_path / "bare.toml")
    assert main(["train", str(bare), "--out", str(tmp_path / "new"), "--init", str(ckpt), *STEPS]) == 0
    assert "using the checkpoint's (hf tokenizer, 512 tokens)" in capsys.readouterr().err
    tok = read_config(tmp_path / "new" / "config.toml").data.tokenizer
    assert tok.kind == "file" and Path(tok.path) == ckpt.resolve()
    assert load_tokenizer(latest_checkpoint(tmp_path / "new")).same_tokens(load_tokenizer(ckpt))


def test_another_bpe_of_the_same_size_is_refused_once_prepared(world, tmp_path, capsys):
    """A 512-token BPE trained on less text: the same size, other tokens; told apart after preparing."""
    toml, ckpt = world
    code = main(["train", str(toml), "--out", str(tmp_path / "new"), "--init", str(ckpt), *STEPS,
                 "--set", "data.max_chars=20000", "--set", f"data.prepared_dir={tmp_path / 'prep'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"--init {ckpt}: the checkpoint was trained with its own tokenizer (hf tokenizer, 512 tokens)" in err[0]
    assert "data.tokenizer = {'kind': 'bpe', 'vocab_size': 512} trained on the corpus" in err[0]
    assert err[0].endswith(f"data.tokenizer.path = '{ckpt}'")
    assert not (tmp_path / "new").exists()


def test_a_tokenizer_file_that_is_not_the_checkpoints_is_refused_before_preparing(world, tmp_path, capsys):
    toml, ckpt = world
    other = tmp_path / "other"
    prepare_data(read_config(toml).data.model_copy(update={"max_chars": 20000, "prepared_dir": str(other)}),
                 progress=False)
    tok_dir = next(other.glob("*/tokenizer"))
    code = main(["train", str(toml), "--out", str(tmp_path / "new"), "--init", str(ckpt), *STEPS,
                 "--set", "data.tokenizer.kind=file", "--set", f"data.tokenizer.path={tok_dir}",
                 "--set", f"data.prepared_dir={tmp_path / 'prep'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "whose token ids mean other words" in err[0], err
    assert not (tmp_path / "prep").exists()  # nothing prepared


def test_an_imported_model_trains_on_from_its_imported_config(world, tiny_corpus, tmp_path):
    _, ckpt = world
    assert main(["export", "hf", str(ckpt), str(tmp_path / "hf")]) == 0
    assert main(["import", "hf", str(tmp_path / "hf"), str(tmp_path / "imported")]) == 0
    imported = tmp_path / "imported"
    data = [f"data.train.0.path={tiny_corpus / 'train.jsonl'}", f"data.valid.0.path={tiny_corpus / 'valid.jsonl'}",
            f"data.prepared_dir={tmp_path / 'prep'}", "train.batch_size=4", "train.eval_every=0",
            "train.peak_flops=1e11", "train.progress=false"]
    sets = [a for kv in data for a in ("--set", kv)]
    code = main(["train", str(imported / "config.toml"), "--out", str(tmp_path / "on"), "--init", str(imported),
                 *STEPS, *sets])
    assert code == 0
    assert load_tokenizer(latest_checkpoint(tmp_path / "on")).same_tokens(load_tokenizer(ckpt))
