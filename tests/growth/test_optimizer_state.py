"""AdamW state after growth: a new block starts as a fresh optimizer would (step 0, zero moments, its count
starting at its first non-zero gradient), old and widened tensors keep their step counts, and the per-tensor
counts survive full and sharded (DCP) checkpoints."""

from __future__ import annotations

import torch

from flm.config import GrowthConfig, TrainConfig
from flm.distributed.env import DistEnv
from flm.distributed.parallel_model import ParallelModel
from flm.growth import grow, make_plan

from ._util import mup_tiny

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
LR, WD, OLD_STEPS = 1e-2, 0.1, 3


def _optimizer(model: ParallelModel) -> torch.optim.AdamW:
    """As the trainer builds it (flm.train.loop): μP groups, fused AdamW."""
    return torch.optim.AdamW(model.param_groups(LR, WD), lr=LR, weight_decay=WD, betas=(0.9, 0.95), fused=True)


def _train(model: ParallelModel, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, model.cfg.vocab_size, (2, 16), generator=gen)
        opt.zero_grad()
        model.forward_backward([(x, x.roll(-1, 1), torch.ones(2, 16))], torch.tensor(32.0))
        opt.step()


def _grown(growth: GrowthConfig) -> tuple[ParallelModel, torch.optim.Optimizer, list[str]]:
    """A model trained OLD_STEPS steps, grown by ``growth`` with its moments, mid-ramp (m = 0.5, so the new
    units get gradients), and its optimizer loaded as ``flm run`` loads it. Returns the new blocks' names too."""
    old = ParallelModel(mup_tiny(), ENV, TrainConfig(), seed=0)
    opt = _optimizer(old)
    _train(old, opt, OLD_STEPS)
    tensors, step = old.full_optim_state(opt)
    assert step == OLD_STEPS
    res = grow(old.cfg, old.full_model_state(), growth, tensors, seed=1)
    model = ParallelModel(res.cfg, ENV, TrainConfig(), seed=0, state=res.state_dict, growth=res.mask_state)
    model.module.set_mask_value(0.5)
    new_opt = _optimizer(model)
    model.load_optim_state(new_opt, res.optim_state, step, res.plan.carried_steps(step))
    new = [tp.name for tp in res.plan.tensors if tp.new_param]
    return model, new_opt, new


def test_new_blocks_take_a_fresh_adamw_first_step_old_tensors_keep_their_counts():
    model, opt, new = _grown(GrowthConfig(d_model=48, n_heads=6, n_layers=3, depth_position=[1]))
    params = dict(model.module.named_parameters())
    assert new and all(n.startswith("blocks.1.") for n in new)
    before = {n: p.detach().clone() for n, p in params.items()}
    x = torch.randint(0, model.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(7))
    opt.zero_grad()
    model.forward_backward([(x, x.roll(-1, 1), torch.ones(2, 16))], torch.tensor(32.0))
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    opt.step()
    # a fresh AdamW, same groups (μP LR and decay per tensor), on the same gradient
    for group in opt.param_groups:
        for name, p in zip(group["names"], group["params"]):
            if name not in new:
                continue
            ref = before[name].clone().requires_grad_(True)
            fresh = torch.optim.AdamW([ref], lr=group["lr"], weight_decay=group["weight_decay"], betas=(0.9, 0.95))
            ref.grad = grads[name]
            fresh.step()
            assert grads[name].abs().sum() > 0, name
            assert torch.allclose(p.detach(), ref.detach(), rtol=0, atol=1e-6), name
            assert int(opt.state[p]["step"]) == 1
    widened = params["blocks.0.attn.q.weight"]  # d_model and heads grew: one count per tensor, the old one
    assert int(opt.state[widened]["step"]) == OLD_STEPS + 1 and int(opt.state[params["tok_emb.weight"]]["step"]) == 4
    assert model.optim_steps(opt) == {"step": OLD_STEPS + 1, "param_steps": dict.fromkeys(new, 1)}


def _states(model: ParallelModel, opt: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
    return {n: opt.state[p] for n, p in model.module.named_parameters() if p in opt.state}


def test_per_tensor_step_counts_survive_full_and_sharded_checkpoints(tmp_path):
    model, opt, new = _grown(GrowthConfig(n_layers=3, depth_position="interleave"))
    _train(model, opt, 2, seed=3)
    meta = model.optim_steps(opt)
    assert meta == {"step": OLD_STEPS + 2, "param_steps": dict.fromkeys(new, 2)}
    want = _states(model, opt)
    # full tensors (checkpoint_format = "full")
    tensors, step = model.full_optim_state(opt)
    assert step == OLD_STEPS + 2
    full = ParallelModel(model.cfg, ENV, TrainConfig(), seed=0, state=model.full_model_state())
    full_opt = _optimizer(full)
    full.load_optim_state(full_opt, tensors, meta["step"], meta["param_steps"])
    # each rank's shards through torch.distributed.checkpoint (checkpoint_format = "sharded")
    model.save_sharded(tmp_path / "model", tmp_path / "optim", opt)
    sharded = ParallelModel(model.cfg, ENV, TrainConfig(), seed=5)
    sharded_opt = _optimizer(sharded)
    sharded.load_sharded(tmp_path / "model", tmp_path / "optim", sharded_opt, meta["step"], meta["param_steps"])
    for other, other_opt in ((full, full_opt), (sharded, sharded_opt)):
        got = _states(other, other_opt)
        assert set(got) == set(want)
        for name, st in want.items():
            assert float(got[name]["step"]) == float(st["step"]), name
            assert torch.equal(got[name]["exp_avg"], st["exp_avg"]) and torch.equal(got[name]["exp_avg_sq"],
                                                                                      st["exp_avg_sq"])
        assert other.optim_steps(other_opt) == meta


def test_carried_steps_follow_the_blocks_that_move():
    """A second growth: counts that differ from the step (a block the first growth added) move with their block;
    the blocks this growth adds are left out (no state: fresh); a widened tensor keeps its count."""
    plan = make_plan(mup_tiny(n_layers=2), GrowthConfig(d_model=48, n_layers=4, depth_position=[0, 2]))
    assert plan.layer_source == [None, 0, None, 1]
    old = {"blocks.1.mlp.up.weight": 5, "blocks.1.ln1.bias": 9, "blocks.0.attn.q.weight": 4}
    assert plan.carried_steps(9, old) == {"blocks.3.mlp.up.weight": 5, "blocks.1.attn.q.weight": 4}
    assert plan.carried_steps(9) == {}


def _step(model: ParallelModel, opt: torch.optim.Optimizer, seed: int, drop: bool) -> dict[str, torch.Tensor]:
    """One training step as the trainer takes it (``drop``: at m = 0, new blocks' zero gradients dropped);
    returns the gradients it used."""
    x = torch.randint(0, model.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(seed))
    opt.zero_grad()
    model.forward_backward([(x, x.roll(-1, 1), torch.ones(2, 16))], torch.tensor(32.0))
    grads = {n: p.grad.detach().clone() for n, p in model.module.named_parameters() if p.grad is not None}
    if drop:
        model.drop_silent_grads(opt)
    opt.step()
    return grads


def _first_real_update_vs_fresh(drop: bool) -> float:
    """Largest |difference| between a new block's first update on a non-zero gradient (the ramp's second
    step, m = 0.5) and a fresh AdamW's on the same gradient, after a first step at m = 0."""
    model, opt, new = _grown(GrowthConfig(n_layers=3, depth_position=[1]))
    model.module.set_mask_value(0.0)
    grads = _step(model, opt, seed=5, drop=drop)
    assert all(float(grads[n].abs().max()) == 0.0 for n in new)  # m = 0: exactly zero, as the masks promise
    model.module.set_mask_value(0.5)
    params = dict(model.module.named_parameters())
    before = {n: params[n].detach().clone() for n in new}
    grads = _step(model, opt, seed=7, drop=False)
    worst = 0.0
    for group in opt.param_groups:
        for name, p in zip(group["names"], group["params"]):
            if name in new:
                ref = before[name].clone().requires_grad_(True)
                fresh = torch.optim.AdamW([ref], lr=group["lr"], weight_decay=group["weight_decay"], betas=(0.9, 0.95))
                ref.grad = grads[name]
                fresh.step()
                assert grads[name].abs().sum() > 0, name
                update, want = p.detach() - before[name], ref.detach() - before[name]
                worst = max(worst, float((update - want).abs().max() / want.abs().max()))
                assert int(opt.state[p]["step"]) == (1 if drop else 2)
    return worst


def test_a_new_blocks_first_real_update_is_a_fresh_adamws():
    """The ramp's first step is at m = 0, where a new block's gradient is zero: its AdamW count must not start
    there, or the first real update is ~0.73x a fresh optimizer's (bias correction of step 2 on one gradient)."""
    assert _first_real_update_vs_fresh(drop=True) < 1e-6
    assert _first_real_update_vs_fresh(drop=False) > 0.2  # what the dropped step avoids
