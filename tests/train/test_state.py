"""The trainer's stateful parts: each one's state round-trips, and a trainer restored from a checkpoint
continues exactly like one that never stopped."""

from __future__ import annotations

import torch

from flm.checkpoint.model_state import ModelState
from flm.config import ModelConfig, TrainConfig, config_from_dict
from flm.distributed.env import DistEnv
from flm.distributed.parallel_model import ParallelModel
from flm.train.loop import Trainer
from flm.train.state import Counters, Progress, RngState

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_counters_round_trip_and_advance():
    c = Counters()
    c.advance(tokens=128, flops_per_token=10.0)
    c.advance(tokens=128, flops_per_token=10.0)
    assert (c.step, c.tokens, c.flops) == (2, 256, 2560.0)
    d = Counters()
    d.load_state_dict({**c.state_dict(), "seconds": 3.5})
    assert (d.step, d.tokens, d.flops, d.seconds) == (2, 256, 2560.0, 3.5)


def test_progress_restores_what_it_saves():
    saved = Progress(2, Counters(step=5, tokens=640, flops=1e6, seconds=1.0), train_loss=3.25).state_dict()
    again = Progress(2, Counters())
    again.load_state_dict(saved)
    assert (again.counters.step, again.counters.tokens, again.train_loss) == (5, 640, 3.25)
    assert again.state_dict()["seconds"] >= saved["seconds"]


def test_rng_state_replays_the_same_dropout_stream():
    rng = RngState()
    saved = rng.state_dict()
    first = torch.nn.functional.dropout(torch.ones(64), 0.5)
    rng.load_state_dict(saved)
    assert torch.equal(torch.nn.functional.dropout(torch.ones(64), 0.5), first)


def _model_and_optimizer(seed: int):
    cfg = ModelConfig(vocab_size=128, d_model=32, n_layers=1, n_heads=2, max_seq_len=16)
    model = ParallelModel(cfg, ENV, TrainConfig(), seed=seed)
    opt = torch.optim.AdamW(model.param_groups(1e-2, 0.1), lr=1e-2)
    return model, opt


def test_model_and_optimizer_state_moves_into_another_model():
    model, opt = _model_and_optimizer(0)
    x = torch.randint(0, 128, (2, 16))
    model.forward_backward([(x, x, torch.ones(2, 16))], torch.tensor(32.0))
    opt.step()
    tensors, step = ModelState(model).full_optim_state(opt)
    assert step == 1 and set(tensors) == {f"{k}/{n}" for k in ("exp_avg", "exp_avg_sq") for n, _ in
                                          model.module.named_parameters()}
    other, other_opt = _model_and_optimizer(1)
    assert not torch.equal(other.module.tok_emb.weight, model.module.tok_emb.weight)  # another seed
    ModelState(other).load_model_state(ModelState(model).full_model_state())
    ModelState(other).load_optim_state(other_opt, tensors, step)
    for (name, a), b in zip(model.module.named_parameters(), other.module.parameters()):
        assert torch.equal(a, b), name
    moved, moved_step = ModelState(other).full_optim_state(other_opt)
    assert moved_step == 1 and all(torch.equal(moved[k], tensors[k]) for k in tensors)
    other_opt.step()  # the loaded state is one fused AdamW accepts


def test_a_restored_trainer_continues_bitwise(tiny_cfg, tmp_path):
    cfg = config_from_dict(tiny_cfg(steps=4, ckpt_every=2))
    whole = Trainer(cfg, tmp_path / "whole", env=ENV)
    whole.fit()
    half = Trainer(cfg, tmp_path / "half", env=ENV)
    half.fit(stop_after=2)
    again = Trainer(cfg, tmp_path / "half", env=ENV)
    again.restore(half.last_ckpt)
    assert again.counters.step == 2 and again.loader.state_dict() == half.loader.state_dict()
    again.fit()
    assert again.last_loss == whole.last_loss
    for a, b in zip(whole.model.module.parameters(), again.model.module.parameters()):
        assert torch.equal(a, b)
