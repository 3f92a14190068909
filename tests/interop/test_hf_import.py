"""`flm import hf`: GPT-NeoX folders built locally become flm checkpoints that compute transformers' function,
that flm grows function-preservingly, and that round-trip bit for bit; variants flm cannot express are refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from flm.checkpoint import load_model, read_config
from flm.cli import main
from flm.growth.offline import grow_checkpoint
from flm.growth.spec import parse_growth_spec
from flm.interop.hf_export import export_hf
from flm.interop.hf_import import import_hf

transformers = pytest.importorskip("transformers")


def _hf_logits(folder, x):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(x).logits


def _tokens(vocab: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 48), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_import_matches_transformers(make_neox, tmp_path, act):
    src = make_neox(hidden_act=act, vocab_size=300)  # not a multiple of 128: flm pads with zero rows
    import_hf(src, tmp_path / "ckpt")
    model, cfg, tok = load_model(tmp_path / "ckpt")
    assert cfg.model.padded_vocab_size == 384 and tok.vocab_size <= cfg.model.vocab_size
    x = _tokens(300)
    with torch.no_grad():
        ours = model(x)[..., :300]
    assert (ours - _hf_logits(src, x)).abs().max().item() <= 1e-4


def test_flm_to_hf_to_flm_is_bitwise(make_ckpt, tmp_path):
    ckpt = make_ckpt()
    export_hf(ckpt, tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "back")
    a, b = load_file(ckpt / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_config(tmp_path / "back" / "config.toml").model == read_config(ckpt / "config.toml").model
    assert (tmp_path / "back" / "tokenizer.json").read_text() == (ckpt / "tokenizer.json").read_text()


def test_grown_import_equals_transformers_at_m0(make_neox, tmp_path):
    src = make_neox(vocab_size=384)
    import_hf(src, tmp_path / "ckpt")
    spec = parse_growth_spec("d_model=48,d_ff=120,n_layers=3,ramp_steps=10")
    grow_checkpoint(tmp_path / "ckpt", spec, tmp_path / "grown")
    model, cfg, _ = load_model(tmp_path / "grown")
    assert cfg.model.d_model == 48 and cfg.model.n_layers == 3 and model.growing
    x = _tokens(384)
    with torch.no_grad():
        ours = model(x)
    assert (ours - _hf_logits(src, x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("over", "word"),
    [
        ({"use_parallel_residual": True}, "parallel residual"),
        ({"rotary_pct": 0.25}, "partial rotary"),
        ({"tie_word_embeddings": False}, "untied"),
        ({"attention_bias": False}, "no attention biases"),
        ({"hidden_act": "relu"}, "activation"),
    ],
)
def test_unrepresentable_variants_are_refused(make_neox, tmp_path, capsys, over, word):
    src = make_neox(**over)
    capsys.readouterr()  # transformers' progress bars
    assert main(["import", "hf", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and word in err
    assert not (tmp_path / "out").exists()


def test_bad_folders_are_one_line_errors(make_neox, tmp_path, capsys):
    src = make_neox()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "plain").mkdir()
    capsys.readouterr()
    cases = [
        ([str(src), str(tmp_path / "taken")], "already exists"),
        ([str(other), str(tmp_path / "o1")], "unsupported architecture"),
        ([str(tmp_path / "plain"), str(tmp_path / "o2")], "not a transformers model folder"),
        ([str(tmp_path / "missing"), str(tmp_path / "o3")], "not a folder"),
    ]
    for argv, words in cases:
        assert main(["import", "hf", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert not any((tmp_path / n).exists() for n in ("o1", "o2", "o3"))
