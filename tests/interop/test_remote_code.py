"""`flm export hf` of an xPos model: the shipped configuration_flm.py / modeling_flm.py (trust_remote_code)
compute flm's function, generate the same greedy tokens with their KV cache, and import back bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from flm.checkpoint import load_model, read_config
from flm.interop.hf_export import export_hf
from flm.interop.hf_import import import_hf

from .conftest import assert_same_greedy

transformers = pytest.importorskip("transformers")

OPTIONS = {
    "xpos": {"xpos": True, "xpos_scale_base": 16.0},
    "flm101b-options": {"xpos": True, "xpos_scale_base": 16.0, "mup_base_width": 16, "output_mult": 2.0,
                        "input_mult": 1.5, "scale_attn_by_inverse_layer_idx": True, "reorder_and_upcast_attn": True},
}  # fmt: skip


def _load(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True).eval()


@pytest.mark.parametrize("name", list(OPTIONS))
def test_remote_code_matches_flm(make_ckpt, tmp_path, name):
    ckpt = make_ckpt(**OPTIONS[name])
    export_hf(ckpt, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "flm"
    assert (tmp_path / "hf" / "modeling_flm.py").is_file() and (tmp_path / "hf" / "configuration_flm.py").is_file()
    model, _, _ = load_model(ckpt)
    hf = _load(tmp_path / "hf")
    x = torch.randint(0, model.cfg.vocab_size, (2, 50), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_remote_code_greedy_generation_with_cache(make_ckpt, tmp_path, tok):
    ckpt = make_ckpt(**OPTIONS["flm101b-options"])
    export_hf(ckpt, tmp_path / "hf")
    assert_same_greedy(ckpt, _load(tmp_path / "hf"), tok.encode("the river of stone"), 24, tok.vocab_size)


def test_xpos_export_imports_back_bitwise(make_ckpt, tmp_path):
    ckpt = make_ckpt(**OPTIONS["flm101b-options"])
    export_hf(ckpt, tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "back")
    a, b = load_file(ckpt / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_config(tmp_path / "back" / "config.toml").model == read_config(ckpt / "config.toml").model
