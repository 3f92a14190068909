"""The FLM decoder: causality, rotary/xPos, KV cache, shapes and parameterization, config errors, and the
chunked readout + cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flm.config import ModelConfig, config_from_dict
from flm.conversion import rotate_half_rows
from flm.errors import FlmError
from flm.loss import linear_cross_entropy
from flm.model import FLM, Rotary


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=300, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


def build(seed: int = 0, **kw) -> FLM:
    torch.manual_seed(seed)
    model = FLM(tiny(**kw))
    # zero biases and unit LayerNorms would hide mistakes in their handling: randomise every parameter
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def tokens(batch: int = 2, seq: int = 24, vocab: int = 300, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# ----- causality and the KV cache ------------------------------------------------------------------------


@pytest.mark.parametrize("xpos", [True, False])
def test_changing_a_future_token_never_changes_earlier_logits(xpos: bool) -> None:
    model = build(xpos=xpos)
    x = tokens()
    ref = model(x)
    for pos in (5, 13, 23):
        y = x.clone()
        y[:, pos] = (y[:, pos] + 1) % 300
        out = model(y)
        torch.testing.assert_close(out[:, :pos], ref[:, :pos], rtol=0, atol=1e-6)
        assert (out[:, pos] - ref[:, pos]).abs().max() > 1e-4  # the changed position itself does move


@pytest.mark.parametrize("xpos", [True, False])
def test_kv_cache_prefill_then_one_token_at_a_time_equals_full_forward(xpos: bool) -> None:
    model = build(xpos=xpos)
    x = tokens(batch=3, seq=20)
    full = model(x)
    cache = model.new_cache(3)
    steps = [model(x[:, :8], cache)] + [model(x[:, i : i + 1], cache) for i in range(8, 20)]
    assert cache.pos == 20
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=2e-5)


def test_kv_cache_multi_token_chunks_equal_full_forward() -> None:
    model = build()
    x = tokens(batch=2, seq=30)
    full = model(x)
    cache = model.new_cache(2)
    chunks = [model(x[:, a:b], cache) for a, b in ((0, 7), (7, 8), (8, 19), (19, 30))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=0, atol=2e-5)


def test_kv_cache_greedy_generation_matches_recomputing_the_prefix() -> None:
    model = build()
    prompt = tokens(batch=1, seq=5)
    cached, cache = prompt.clone(), model.new_cache(1)
    logits = model(cached, cache)
    for _ in range(10):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        cached = torch.cat([cached, nxt], dim=1)
        logits = model(nxt, cache)
    plain = prompt.clone()
    for _ in range(10):
        plain = torch.cat([plain, model(plain)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, plain)


# ----- rotary and xPos -------------------------------------------------------------------------------------


def scores(rot: Rotary, q: torch.Tensor, k: torch.Tensor, length: int, start: int = 0) -> torch.Tensor:
    """q.k after rotation, for the same q and k vector placed at every position: (length, length)."""
    qs = q.expand(1, length, 1, -1).contiguous()
    ks = k.expand(1, length, 1, -1).contiguous()
    rq, rk = rot(qs, ks, start)
    return rq[0, :, 0] @ rk[0, :, 0].T


def test_rotary_scores_depend_only_on_relative_position_without_xpos() -> None:
    cfg = tiny(xpos=False, max_seq_len=64)
    rot = Rotary(cfg)
    q, k = torch.randn(cfg.head_dim, dtype=torch.float32), torch.randn(cfg.head_dim)
    s = scores(rot, q, k, 40)
    for shift in (1, 7, 20):
        torch.testing.assert_close(s[shift:, shift:], s[:-shift, :-shift], rtol=1e-5, atol=1e-5)
    # a start offset (the KV cache) is the same as a shift
    torch.testing.assert_close(scores(rot, q, k, 20, start=13), s[13:33, 13:33], rtol=1e-5, atol=1e-5)
    # and the rotation is a rotation: norms are kept
    rq, _ = rot(q.expand(1, 40, 1, -1).contiguous(), q.expand(1, 40, 1, -1).contiguous())
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(1, 40, 1), rtol=1e-5, atol=1e-5)
    # not a no-op: different distances give different scores
    assert (s.diagonal(0)[0] - s.diagonal(-5)[0]).abs() > 1e-3


def test_xpos_decays_each_frequency_by_zeta_to_the_distance_over_scale_base() -> None:
    cfg_x, cfg_plain = tiny(xpos=True, xpos_scale_base=16.0), tiny(xpos=False)
    hd = cfg_x.head_dim
    rx, rp = Rotary(cfg_x), Rotary(cfg_plain)
    for pair in (0, hd // 4, hd // 2 - 1):  # one rotary pair (dims 2i, 2i+1) at a time
        q, k = torch.zeros(hd), torch.zeros(hd)
        q[2 * pair : 2 * pair + 2] = torch.tensor([0.8, -0.3])
        k[2 * pair : 2 * pair + 2] = torch.tensor([0.5, 0.9])
        with_x, without = scores(rx, q, k, 40, start=3), scores(rp, q, k, 40, start=3)
        zeta = (2 * pair + 0.4 * hd) / (1.4 * hd)
        dist = torch.arange(40)[:, None] - torch.arange(40)[None, :]  # query pos - key pos
        factor = zeta ** (dist.double() / 16.0)
        torch.testing.assert_close(with_x.double(), without.double() * factor, rtol=1e-4, atol=1e-6)
        # relative: the centre of the positions cancels
        torch.testing.assert_close(with_x[5:, 5:], with_x[:-5, :-5], rtol=1e-4, atol=1e-6)
        # decay: for causal (dist >= 0) pairs the factor shrinks with distance, strictly below 1
        causal = factor[dist >= 0]
        assert factor[10, 0] < factor[5, 0] < factor[1, 0] < 1.0 and causal.max() == 1.0


def test_rotate_half_rows_converts_to_the_gpt_neox_convention() -> None:
    """flm pairs dims (2i, 2i+1); GPT-NeoX/Llama in HF pair (i, i + hd/2). Converted q/k projections must
    give the same attention scores under the HF-style rotate-half rotary."""
    cfg = tiny(xpos=False)
    hd, a = cfg.head_dim, cfg.attn_dim
    wq, wk, x = torch.randn(a, cfg.d_model), torch.randn(a, cfg.d_model), torch.randn(1, 12, cfg.d_model)
    rot = Rotary(cfg)
    q, k = (x @ wq.T).view(1, 12, -1, hd), (x @ wk.T).view(1, 12, -1, hd)
    rq, rk = rot(q, k)
    ours = torch.einsum("bqhd,bkhd->bhqk", rq, rk)

    def rotate_half_reference(t: torch.Tensor) -> torch.Tensor:  # transformers' apply_rotary_pos_emb
        inv = 1.0 / (cfg.rotary_theta ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(12).float(), inv)
        cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None], torch.cat([ang.sin()] * 2, -1)[:, None]
        t1, t2 = t.chunk(2, -1)
        return t * cos + torch.cat([-t2, t1], -1) * sin

    hq = (x @ rotate_half_rows(wq, hd).T).view(1, 12, -1, hd)
    hk = (x @ rotate_half_rows(wk, hd).T).view(1, 12, -1, hd)
    theirs = torch.einsum("bqhd,bkhd->bhqk", rotate_half_reference(hq), rotate_half_reference(hk))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert torch.equal(rotate_half_rows(rotate_half_rows(wq, hd), hd, inverse=True), wq)


def test_rotary_real_arithmetic_path_for_torch_compile_equals_the_complex_one(monkeypatch) -> None:
    rot = Rotary(tiny(xpos=True))
    q, k = torch.randn(2, 9, 4, 8), torch.randn(2, 9, 4, 8)
    eager = rot(q, k, start=3)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    real = rot(q, k, start=3)
    for a, b in zip(eager, real):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# ----- shapes and parameterization ---------------------------------------------------------------------------


def test_vocab_is_padded_to_a_multiple_of_128() -> None:
    model = build()
    assert model.cfg.padded_vocab_size == 384
    assert model.tok_emb.weight.shape == (384, 32)
    assert model(tokens()).shape == (2, 24, 384)
    assert ModelConfig(vocab_size=256).padded_vocab_size == 256


def test_embeddings_are_tied_one_parameter() -> None:
    model = build()
    big = [n for n, p in model.named_parameters() if p.shape[0] == model.cfg.padded_vocab_size]
    assert big == ["tok_emb.weight"]
    assert [k for k in model.state_dict() if k.startswith("tok_emb")] == ["tok_emb.weight"]
    # the readout uses it: changing one embedding row changes that token's logit everywhere
    x = tokens()
    before = model(x)
    with torch.no_grad():
        model.tok_emb.weight[299] += 1.0
    after = model(x)
    mask = (x == 299).unsqueeze(-1)
    changed = (after - before).abs()
    assert changed[..., 299][~mask[..., 0]].min() > 0  # logit 299 moved even where token 299 is absent


def test_every_linear_has_a_bias_and_dropout_defaults_to_zero() -> None:
    model = build()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 6 * 2 and all(m.bias is not None for m in linears)
    assert ModelConfig().dropout == 0.0
    x = tokens()
    model.train()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)  # no dropout: train mode is deterministic


@pytest.mark.parametrize("kw", [{}, {"d_ff": 40}, {"head_dim": 6, "n_heads": 3}, {"vocab_size": 129}])
def test_parameter_count_matches_config(kw: dict) -> None:
    cfg = tiny(**kw)
    model = FLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()
    emb = cfg.padded_vocab_size * cfg.d_model
    assert cfg.num_params(embeddings=False) == cfg.num_params() - emb


def reference_attention(attn, x: torch.Tensor, rot: Rotary) -> torch.Tensor:
    b, t, _ = x.shape
    q = attn.q(x).view(b, t, attn.n_heads, -1)
    k = attn.k(x).view(b, t, attn.n_heads, -1)
    v = attn.v(x).view(b, t, attn.n_heads, -1)
    q, k = rot(q, k)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * attn.scale
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    y = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v).reshape(b, t, -1)
    return attn.o(y)


@pytest.mark.parametrize("scale,expect", [("sqrt", 1 / math.sqrt(8)), ("linear", 1 / 8)])
def test_attention_scale_options(scale: str, expect: float) -> None:
    model = build(attn_scale=scale)
    attn = model.blocks["0"].attn
    assert attn.scale == pytest.approx(expect)
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        rope = model.rotary.tables(0, 10, x.device)
        torch.testing.assert_close(
            attn(x, rope, model.grow_m), reference_attention(attn, x, model.rotary), rtol=1e-4, atol=1e-5
        )
    assert tiny(mup_base_width=16).attn_scale == "linear" and tiny().attn_scale == "sqrt"


def test_input_multiplier_scales_the_embedding_output() -> None:
    seen: list[torch.Tensor] = []
    model = build(input_mult=2.5)
    model.blocks["0"].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = tokens()
    model(x)
    torch.testing.assert_close(seen[0], model.tok_emb.weight[x] * 2.5)


@pytest.mark.parametrize("mup_base_width", [None, 16])
def test_output_multiplier_scales_the_logits(mup_base_width: int | None) -> None:
    one = build(output_mult=1.0, mup_base_width=mup_base_width)
    three = build(output_mult=3.0, mup_base_width=mup_base_width)
    three.load_state_dict(one.state_dict())
    x = tokens()
    torch.testing.assert_close(three(x), 3.0 * one(x), rtol=1e-5, atol=1e-5)
    width_mult = 32 / mup_base_width if mup_base_width else 1.0
    assert three.readout_mult == pytest.approx(3.0 / width_mult)


@pytest.mark.parametrize(
    "model_cfg,key",
    [
        ({"d_model": 30, "n_heads": 4}, "model.d_model"),
        ({"d_model": 60, "n_heads": 4}, "model.head_dim"),  # head_dim 15
        ({"d_model": 64, "n_heads": 4, "head_dim": 9}, "model.head_dim"),
    ],
)
def test_config_errors_name_the_key(model_cfg: dict, key: str) -> None:
    with pytest.raises(FlmError, match=key.replace(".", r"\.")):
        config_from_dict({"model": model_cfg})


# ----- the chunked readout + cross-entropy ---------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_linear_cross_entropy_matches_logits_then_cross_entropy(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 16, generator=g, requires_grad=True)
    w = torch.randn(40, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 40, (50,), generator=g)
    wt = torch.rand(50, generator=g) * (torch.rand(50, generator=g) > 0.3)
    ref = (F.cross_entropy(h @ w.T, y, reduction="none") * wt).sum()
    gh, gw = torch.autograd.grad(ref * 1.7, (h, w))
    out = linear_cross_entropy(h, w, y, wt, chunk=chunk)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    oh, ow = torch.autograd.grad(out * 1.7, (h, w))
    torch.testing.assert_close(oh, gh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ow, gw, rtol=1e-5, atol=1e-6)


def test_forward_with_targets_gives_the_mean_loss_and_its_gradients() -> None:
    a, b = build(output_mult=2.0), build(output_mult=2.0)
    x, y = tokens(), tokens(seed=2)
    a.train(), b.train()
    ref = F.cross_entropy(a(x).flatten(0, 1), y.flatten())
    ref.backward()
    loss = b(x, targets=y)
    loss.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)
    # per-token weights: a loss mask over a sum
    mask = (torch.arange(24) % 3 == 0).float().expand(2, 24)
    weighted = b(x, targets=y, loss_weights=mask)
    ce = F.cross_entropy(a(x).flatten(0, 1), y.flatten(), reduction="none")
    torch.testing.assert_close(weighted, (ce * mask.flatten()).sum(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # no gradients asked for: the value alone
        torch.testing.assert_close(b(x, targets=y), ref, rtol=1e-5, atol=1e-6)


def test_forward_with_targets_under_bf16_autocast_is_close_to_fp32() -> None:
    model = build()
    x, y = tokens(), tokens(seed=2)
    ref = model(x, targets=y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, targets=y)
    assert low.dtype == torch.float32 and abs(float(low) - float(ref)) < 0.05


def test_readout_gradients_under_bf16_stay_accurate_for_confident_tokens() -> None:
    """softmax - onehot is formed in fp32 before the bf16 cast: for a token predicted with p ~ 0.998 the
    two terms nearly cancel, and cancelling after rounding gave 13% error in the readout gradient."""

    torch.manual_seed(0)
    n, d, v = 64, 32, 256
    w = torch.randn(v, d) * 0.3
    y = torch.randint(0, v, (n,))
    h = w[y] * 14 + 0.1 * torch.randn(n, d)
    assert torch.softmax(h @ w.t(), -1)[torch.arange(n), y].mean() > 0.99

    def grads(bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            linear_cross_entropy(hh, ww, y, torch.full((n,), 1.0 / n)).backward()
        return hh.grad, ww.grad

    (ref_h, ref_w), (low_h, low_w) = grads(False), grads(True)
    assert (low_h - ref_h).norm() / ref_h.norm() < 0.05
    assert (low_w - ref_w).norm() / ref_w.norm() < 0.05
