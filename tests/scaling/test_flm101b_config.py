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
