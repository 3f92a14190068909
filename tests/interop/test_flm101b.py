"""A tiny folder in the released FLM-101B format (built here from its published config's rules) imports into
flm and matches a reference forward written from the published modeling description (GPT-2 code base,
Conv1D weights, lucidrains-style interleaved rotary with xPos, μP readout, GPT-2 attention flags)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from flm.checkpoint import load_model
from flm.cli import main
from flm.interop.hf_import import import_hf

CONFIG = {  # the published config.json's keys, tiny sizes (CofeAI/FLM-101B: n_embd 10240, n_layer 80, ...)
    "architectures": ["FLM"], "model_type": "flm", "activation_function": "gelu_fast",
    "auto_map": {"AutoConfig": "configuration_flm.FLMConfig", "AutoModelForCausalLM": "modeling_flm.FLM"},
    "n_embd": 32, "n_head": 4, "n_inner": 128, "n_layer": 3, "n_positions": 64, "vocab_size": 384,
    "layer_norm_epsilon": 1e-5, "relative_encoding": "rotary", "rotary_theta": 10000, "rotary_use_xpos": True,
    "rotary_xpos_scale_base": 16, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": True,
    "reorder_and_upcast_attn": True, "use_mup": True, "mup_base_width": 16, "mup_scale_factor": 2.0,
    "input_mult": 1.0, "output_mult": 2.0, "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 1,
}  # fmt: skip


def _weights(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, f, v = cfg["n_embd"], cfg["n_inner"], cfg["vocab_size"]

    def r(*shape: int, base: float = 0.0) -> torch.Tensor:
        return base + 0.3 * torch.randn(shape, generator=g)

    w = {"transformer.wte.weight": r(v, d), "transformer.ln_f.weight": r(d, base=1), "transformer.ln_f.bias": r(d)}
    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}."
        w |= {p + "ln_1.weight": r(d, base=1), p + "ln_1.bias": r(d), p + "ln_2.weight": r(d, base=1),
              p + "ln_2.bias": r(d), p + "attn.c_attn.weight": r(d, 3 * d), p + "attn.c_attn.bias": r(3 * d),
              p + "attn.c_proj.weight": r(d, d), p + "attn.c_proj.bias": r(d), p + "mlp.c_fc.weight": r(d, f),
              p + "mlp.c_fc.bias": r(f), p + "mlp.c_proj.weight": r(f, d), p + "mlp.c_proj.bias": r(d)}  # fmt: skip
    return w


def _rotate_half(x: torch.Tensor) -> torch.Tensor:  # lucidrains: pairs (2i, 2i+1)
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def reference_forward(cfg: dict, w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    d, heads, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
    hd, t = d // heads, x.shape[1]
    pos = torch.arange(t, dtype=torch.float64)
    inv = 1.0 / cfg["rotary_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    freqs = (pos[:, None] * inv[None]).repeat_interleave(2, -1)
    zeta = (torch.arange(0, hd, 2, dtype=torch.float64) + 0.4 * hd) / (1.4 * hd)
    scale = (zeta[None] ** ((pos - t // 2) / cfg["rotary_xpos_scale_base"])[:, None]).repeat_interleave(2, -1)
    cos, sin, scale = freqs.cos().float(), freqs.sin().float(), scale.float()
    gelu_fast = lambda u: 0.5 * u * (1.0 + torch.tanh(u * 0.7978845608 * (1.0 + 0.044715 * u * u)))  # noqa: E731
    width_mult = d / cfg["mup_base_width"]
    h = w["transformer.wte.weight"][x] * cfg["input_mult"]
    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}."
        a = F.layer_norm(h, (d,), w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        q, k, v = (a @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]).split(d, dim=-1)
        q, k, v = (z.unflatten(-1, (heads, hd)).transpose(1, 2) for z in (q, k, v))
        q = (q * cos + _rotate_half(q) * sin) * scale
        k = (k * cos + _rotate_half(k) * sin) / scale
        att = (q @ k.transpose(-1, -2)) / hd / (i + 1)  # μP 1/d_head; GPT-2 scale_attn_by_inverse_layer_idx
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).flatten(-2)
        h = h + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        m = F.layer_norm(h, (d,), w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        h = h + gelu_fast(m @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]) @ w[p + "mlp.c_proj.weight"]
        h = h + w[p + "mlp.c_proj.bias"]
    h = F.layer_norm(h, (d,), w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], eps)
    return (h * cfg["output_mult"] / width_mult) @ w["transformer.wte.weight"].T  # MuReadout, tied


@pytest.fixture
def flm101b_folder(tmp_path, tok):
    folder = tmp_path / "flm101b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    torch.save(_weights(CONFIG), folder / "pytorch_model.bin")  # the release ships .bin shards
    tok.backend.save(str(folder / "tokenizer.json"))
    return folder


def test_flm101b_format_imports_and_matches_reference(flm101b_folder, tmp_path):
    import_hf(flm101b_folder, tmp_path / "ckpt")
    model, cfg, _ = load_model(tmp_path / "ckpt")
    m = cfg.model
    assert m.xpos and m.scale_attn_by_inverse_layer_idx and m.reorder_and_upcast_attn and m.attn_scale == "linear"
    assert m.mup_base_width == 16 and m.output_mult == 2.0 and m.activation == "gelu_tanh"
    x = torch.randint(0, 384, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(x)
    ref = reference_forward(CONFIG, _weights(CONFIG), x)
    assert math.isfinite(ref.abs().max().item())
    assert (ours - ref).abs().max().item() <= 1e-4


def test_flm101b_variants_refused(flm101b_folder, tmp_path, capsys):
    cfg = dict(CONFIG, relative_encoding="alibi")
    (flm101b_folder / "config.json").write_text(json.dumps(cfg))
    assert main(["import", "hf", str(flm101b_folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "relative_encoding" in err and not (tmp_path / "out").exists()
