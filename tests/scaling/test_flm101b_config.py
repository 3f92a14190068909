"""configs/flm-101b.toml is trainable as written on the paper's 192 GPUs: every stage's layout passes the
checks the run preflight makes (without training), and its vocabulary holds every id of its tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from flm.config import load_config
from flm.data.tokenizer import check_vocab, load_tiktoken
from flm.distributed.mesh import check_layout
from flm.growth.plan import make_plan
from flm.stages import resolve_stages

PAPER = Path(__file__).resolve().parents[2] / "configs" / "flm-101b.toml"
WORLD = 192  # 24 nodes x 8 GPUs


def test_layouts_accepted_on_192_processes():
    stages = resolve_stages(load_config(PAPER))
    layouts = []
    for s in stages:
        tc = s.cfg.train
        dims = check_layout(s.parallel, WORLD, s.model, s.cfg.seq_len, s.parallel_where, batch=tc.batch_size)
        per_rank, rem = divmod(tc.batch_size, dims.dp)
        assert rem == 0 and per_rank % (tc.micro_batch_size or per_rank) == 0
        if dims.pp > 1:  # pipeline micro-batches divide each data-parallel rank's batch
            assert per_rank % dims.microbatches == 0
        layouts.append((dims.tp, dims.pp, dims.dp))
    assert layouts == [(2, 1, 96), (4, 2, 24), (4, 4, 12)]  # the paper's TP·PP·DP
    for prev, s in zip(stages, stages[1:]):
        make_plan(prev.model, s.growth)  # the growth steps the run preflight checks


def test_vocabulary_holds_cl100k_and_flm_specials():
    pytest.importorskip("tiktoken")
    cfg = load_config(PAPER)
    assert (cfg.data.tokenizer.kind, cfg.data.tokenizer.name) == ("tiktoken", "cl100k_base")
    tok = load_tiktoken(cfg.data.tokenizer.name)
    assert tok.vocab_size > 100256  # cl100k's special tokens lie above its 100,256 ordinary ids
    for s in resolve_stages(cfg):
        check_vocab(tok, s.model)  # raises when the tokenizer has ids the embedding lacks
    assert cfg.model.padded_vocab_size == 100352  # the paper's padded vocabulary: the shapes are unchanged


def test_one_inherited_schedule_gives_table1_stage_start_lrs():
    """Table 1: 4e-4 / 3.4e-4 / 2e-4 at the stage starts (after their warmups of 2,000 / 100 / 107 steps =
    4,608,000 / 230,400 / 230,400 samples), cosine to 6e-6. The LR is continuous at every boundary, and
    changes faster than the cosine's own slope only inside the stated warmups."""
    from flm.train.schedule import stage_lrs, stage_schedules

    cfg = load_config(PAPER)
    stages = resolve_stages(cfg)
    lrs = stage_lrs(cfg, stages)
    assert [s.warmup for s in lrs] == [2000, 100, 107]
    assert [s.warmup * st.batch_size for s, st in zip(lrs, stages)] == [4_608_000, 230_400, 231_120]
    assert [s.after_warmup for s in lrs] == [
        pytest.approx(4e-4, rel=0.02), pytest.approx(3.4e-4, rel=0.02), pytest.approx(2e-4, rel=0.02)
    ]
    assert cfg.optim.min_lr == 6e-6 and cfg.lr_mode == "inherit"
    scheds = stage_schedules(cfg, stages)
    for prev, s, nxt in zip(scheds, stages, scheds[1:]):
        assert nxt(0) == pytest.approx(prev(s.steps), rel=1e-9)  # each stage starts from the inherited LR
    for i, (sched, s, lr) in enumerate(zip(scheds, stages, lrs)):
        values = [sched(k) for k in range(s.steps)]
        after = values[lr.warmup if i else lr.warmup + 1:]
        assert max(abs(b - a) / a for a, b in zip(after, after[1:])) < 1e-5  # the cosine alone, no jumps
    assert abs(scheds[1](0) - 3.4e-4) / 3.4e-4 < 1e-3  # the horizon makes the 51B start continuous


def test_release_architecture_options_and_readout():
    """The released config.json: scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn, output_mult 2.0
    (grow.readout 'mup'; the default 'keep' would end at 3.64)."""
    cfg = load_config(PAPER)
    final = cfg.stage_models()[-1]
    assert final.scale_attn_by_inverse_layer_idx and final.reorder_and_upcast_attn
    assert final.output_mult == 2.0 and cfg.stages[1].grow.readout == "mup"
    keep = cfg.stages[1].grow.model_copy(update={"readout": "keep"}).apply(cfg.model)
    assert keep.output_mult == pytest.approx(3.64, abs=0.01)


def test_values_not_from_the_paper_or_the_release_say_assumed():
    """Each value flm had to choose says so beside it (the line or the comment just above it)."""
    lines = PAPER.read_text().splitlines()
    chosen = ("dropout", "decay_steps", "vocab_size", "kind", "micro_batch_size", "grow", "recompute_layers")
    for i, line in enumerate(lines):
        if line.split("=")[0].strip() in chosen:
            assert any("ASSUMED" in x or "assumed" in x or "fitted" in x for x in lines[max(0, i - 3): i + 1]), line
