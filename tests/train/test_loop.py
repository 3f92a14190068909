"""The single-process training loop: loss, masks, checkpoints, resume, and the errors users hit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from flm.checkpoint import latest_checkpoint, load_model
from flm.cli import main
from flm.config import ModelConfig, config_from_dict, dump_toml
from flm.distributed.env import DistEnv
from flm.errors import FlmError
from flm.model import FLM
from flm.train.loop import Trainer, train_stage
from flm.train.metrics import read_metrics


def write_cfg(path: Path, cfg: dict) -> Path:
    path.write_text(dump_toml(config_from_dict(cfg)))
    return path


def test_masked_loss_ignores_masked_tokens():
    """The trainer's loss, ``model(x, targets=y, loss_weights=mask / count)``: targets at masked positions
    change neither the loss nor the gradients, and the value is the mean CE over the unmasked tokens."""
    torch.manual_seed(0)
    model = FLM(ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, max_seq_len=8))
    x, y = torch.randint(0, 64, (2, 5)), torch.randint(0, 64, (2, 5))
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 1, 0, 0]], dtype=torch.float32)

    def loss_and_grads(targets):
        model.zero_grad()
        loss = model(x, targets=targets, loss_weights=mask / mask.sum())
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = loss_and_grads(y)
    y2 = torch.where(mask == 0, (y + 1 + torch.randint(0, 62, y.shape)) % 64, y)
    assert not torch.equal(y2, y)
    loss2, grads2 = loss_and_grads(y2)
    assert torch.equal(loss, loss2) and all(torch.equal(a, b) for a, b in zip(grads, grads2))
    with torch.no_grad():
        ce = F.cross_entropy(model(x)[mask == 1], y[mask == 1])
    torch.testing.assert_close(loss, ce, rtol=1e-5, atol=1e-6)


def test_training_lowers_loss_and_writes_run(tiny_cfg, tmp_path):
    cfg = config_from_dict(tiny_cfg(steps=30, eval_every=10))
    res = train_stage(cfg, tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 30 and rows[-1]["step"] == 30
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 3 and vals[-1] < vals[0]
    for key in ("lr", "grad_norm", "tokens_per_s", "flops", "mfu", "tokens"):
        assert key in rows[-1]
    assert rows[-1]["tokens"] == 30 * 4 * 32
    assert res.checkpoint == latest_checkpoint(tmp_path / "run")
    model, loaded_cfg, tok = load_model(tmp_path / "run")
    assert loaded_cfg.model == cfg.model
    assert tok.vocab_size <= cfg.model.vocab_size


def test_checkpoint_round_trip(tiny_cfg, tmp_path):
    cfg = config_from_dict(tiny_cfg(steps=4))
    res = train_stage(cfg, tmp_path / "run")
    saved = load_file(str(res.checkpoint / "model.safetensors"))
    model, _, _ = load_model(res.checkpoint)
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    optim = load_file(str(res.checkpoint / "optim.safetensors"))
    assert {k.split("/")[0] for k in optim} == {"exp_avg", "exp_avg_sq"}
    assert json.loads((res.checkpoint / "optim.json").read_text())["step"] == 4


def test_resume_continues_exactly_in_process(tiny_cfg, tmp_path):
    full = config_from_dict(tiny_cfg(steps=8, ckpt_every=4, keep_last=5))
    train_stage(full, tmp_path / "a")
    with pytest.raises(FlmError, match="past train.steps = 4"):
        train_stage(config_from_dict(tiny_cfg(steps=4, ckpt_every=4)), tmp_path / "a", resume=True)
    train_stage(full, tmp_path / "b", stop_after=4)
    train_stage(full, tmp_path / "b", resume=True)
    a = load_file(str(latest_checkpoint(tmp_path / "a") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "b") / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = [r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")]
    lb = [r["loss"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert la == lb


def _run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_errors_are_one_line(tiny_cfg, tmp_path, capsys):
    cfg_path = write_cfg(tmp_path / "c.toml", tiny_cfg(steps=2))
    code, err = _run_cli(["train", str(tmp_path / "missing.toml")], capsys)
    assert code == 2 and "not found" in err and len(err.splitlines()) == 1

    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nd_modle = 64\n')
    code, err = _run_cli(["train", str(bad)], capsys)
    assert code == 2 and "d_modle" in err and "d_model" in err and len(err.splitlines()) == 1

    bad.write_text('[model]\nd_model = 100\nn_heads = 3\n')
    code, err = _run_cli(["train", str(bad)], capsys)
    assert code == 2 and "model.d_model" in err and len(err.splitlines()) == 1

    bad.write_text('[model]\nd_model = 60\nn_heads = 4\n')
    code, err = _run_cli(["train", str(bad)], capsys)
    assert code == 2 and "head_dim" in err and "odd" in err

    bad.write_text('[train]\nsteps = "many"\n')
    code, err = _run_cli(["train", str(bad)], capsys)
    assert code == 2 and "train.steps" in err

    out = tmp_path / "run"
    assert _run_cli(["train", str(cfg_path), "--out", str(out)], capsys)[0] == 0
    before = (out / "metrics.jsonl").read_bytes()
    # Same folder again without --resume: refused, nothing touched.
    code, err = _run_cli(["train", str(cfg_path), "--out", str(out)], capsys)
    assert code == 2 and "already holds" in err
    other = write_cfg(tmp_path / "o.toml", {**tiny_cfg(steps=2), "model": {**tiny_cfg()["model"], "d_model": 64}})
    code, err = _run_cli(["train", str(other), "--out", str(out)], capsys)
    assert code == 2 and "different run" in err
    code, err = _run_cli(["train", str(other), "--out", str(out), "--resume"], capsys)
    assert code == 2 and "--resume" in err and "model" in err
    assert (out / "metrics.jsonl").read_bytes() == before


def test_corrupt_and_truncated_checkpoints_are_refused(tiny_cfg, tmp_path, capsys):
    cfg_path = write_cfg(tmp_path / "c.toml", tiny_cfg(steps=2))
    out = tmp_path / "run"
    assert main(["train", str(cfg_path), "--out", str(out)]) == 0
    ck = latest_checkpoint(out)
    weights = ck / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, err = _run_cli(["train", str(cfg_path), "--out", str(out), "--set", "train.steps=4", "--resume"], capsys)
    assert code == 2 and "sha256" in err and "no earlier checkpoint" in err
    weights.write_bytes(bytes(data[:100]))
    code, err = _run_cli(["generate", str(out), "--prompt", "The"], capsys)
    assert code == 2 and "truncated" in err


def test_train_init_from_an_offline_grown_checkpoint(tiny_cfg, tmp_path, capsys):
    cfg_path = write_cfg(tmp_path / "c.toml", tiny_cfg(steps=3))
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "small")]) == 0
    grown = tmp_path / "grown"
    assert main(["grow", str(tmp_path / "small"), "--to", "d_model=64,ramp_steps=2", "--out", str(grown)]) == 0
    grown_model = {**tiny_cfg()["model"], "d_model": 64, "n_heads": 4, "d_ff": 128}
    big = write_cfg(tmp_path / "big.toml", {**tiny_cfg(steps=4), "model": grown_model})
    code, err = _run_cli(["train", str(cfg_path), "--out", str(tmp_path / "x"), "--init", str(grown)], capsys)
    assert code == 2 and "--init" in err
    assert main(["train", str(big), "--out", str(tmp_path / "big"), "--init", str(grown)]) == 0
    rows = read_metrics(tmp_path / "big" / "metrics.jsonl")
    assert [r["mask_m"] for r in rows[:2]] == [0.5, 1.0]
    small_loss = read_metrics(tmp_path / "small" / "metrics.jsonl")[-1]["loss"]
    assert rows[0]["loss"] < small_loss + 1.0  # starts from the trained function, not from scratch


def test_init_on_another_seed_reads_the_data_from_the_start(tiny_cfg, tmp_path, capsys):
    """--init from a run on another data stream is allowed (new data for a grown model), with a note;
    from the same stream the loader reads on where the checkpoint stopped."""
    first = write_cfg(tmp_path / "a.toml", tiny_cfg(steps=2))
    assert main(["train", str(first), "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    same = main(["train", str(first), "--out", str(tmp_path / "same"), "--init", str(tmp_path / "a")])
    assert same == 0 and "note:" not in capsys.readouterr().err
    other = write_cfg(tmp_path / "b.toml", tiny_cfg(steps=2, seed=5))
    assert main(["train", str(other), "--out", str(tmp_path / "b"), "--init", str(tmp_path / "a")]) == 0
    assert "reads its data from the start" in capsys.readouterr().err


def test_validation_rows_cover_the_fixed_set_once_for_any_world_size():
    from flm.train.loop import VAL_ROWS, _rank_rows

    x = torch.arange(VAL_ROWS)[:, None].expand(VAL_ROWS, 4)
    batch = (x, x + 1, torch.ones(VAL_ROWS, 4))
    for world in (1, 2, 3, 5, 16, 32):
        parts = [_rank_rows(batch, r, world) for r in range(world)]
        counted = torch.cat([p[0][p[2].sum(1) > 0, 0] for p in parts])  # rows that carry loss
        assert sorted(counted.tolist()) == list(range(VAL_ROWS)), world
        assert all(p[0].shape[0] >= 1 for p in parts)


def test_a_save_killed_mid_way_leaves_nothing_behind_after_the_next_save(tiny_cfg, tmp_path):
    from flm.checkpoint import CKPT_SUBDIR, list_checkpoints

    cfg = config_from_dict(tiny_cfg(steps=4, ckpt_every=2, keep_last=1))
    train_stage(cfg, tmp_path / "run", stop_after=2)
    root = tmp_path / "run" / CKPT_SUBDIR
    for stale in (".tmp-step_00000004-999999", ".old-step_00000002-999999"):  # a kill -9 during a save
        (root / stale).mkdir()
        (root / stale / "model.safetensors").write_bytes(b"x" * 1000)
    train_stage(cfg, tmp_path / "run", resume=True)
    assert sorted(p.name for p in root.iterdir()) == [p.name for p in list_checkpoints(tmp_path / "run")]
    assert len(list_checkpoints(tmp_path / "run")) == 1


def test_ctrl_c_says_which_checkpoint_is_kept(tiny_cfg, tmp_path, monkeypatch, capsys):
    from flm.train import loop

    real_write = loop.MetricsLog.write

    def write(self, rec):
        if rec.get("step") == 3 and "loss" in rec:
            raise KeyboardInterrupt
        real_write(self, rec)

    monkeypatch.setattr(loop.MetricsLog, "write", write)
    with pytest.raises(KeyboardInterrupt):
        train_stage(config_from_dict(tiny_cfg(steps=6, ckpt_every=2)), tmp_path / "run")
    err = capsys.readouterr().err
    assert "interrupted at step 3" in err and "step_00000002" in err and "--resume" in err


def test_document_mask_reaches_the_model(tiny_cfg, tiny_corpus, tmp_path):
    """data.document_mask = true: training and validation attend within documents only, so on windows that
    hold several short documents the losses differ from plain causal attention."""
    words = (tiny_corpus / "train.jsonl").read_text().split()
    short = tmp_path / "short.jsonl"  # documents of 12 words: several per 32-token window
    short.write_text("\n".join(json.dumps({"text": " ".join(words[i : i + 12])}) for i in range(0, 24000, 12)))
    losses = {}
    for mask in (False, True):
        d = tiny_cfg(steps=2, eval_every=2)
        d["data"]["train"] = d["data"]["valid"] = [{"path": str(short)}]
        d["data"]["document_mask"] = mask
        d["data"]["prepared_dir"] = str(tmp_path / "prepared")
        out = tmp_path / str(mask)
        train_stage(config_from_dict(d), out)
        losses[mask] = [(r.get("loss"), r.get("val_loss")) for r in read_metrics(out / "metrics.jsonl")]
    assert losses[True] != losses[False]
    assert all(v is None or math.isfinite(v) for row in losses[True] for v in row)


ONE = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _spiky(trainer, at: dict[int, float]) -> None:
    """Make the trainer's loss at the given (0-based) steps the given value: a poisoned batch."""
    real, calls = trainer.model.forward_backward, []

    def forward_backward(batches, denom):
        loss = real(batches, denom)
        calls.append(len(calls))
        return loss * 0 + at[calls[-1]] if calls[-1] in at else loss

    trainer.model.forward_backward = forward_backward


def test_spike_guard_skips_the_update_and_stops_past_max_events(tiny_cfg, tmp_path):
    d = tiny_cfg(steps=8, eval_every=0)
    d["train"]["spike"] = {"factor": 2.0, "window": 5, "max_events": 1}
    trainer = Trainer(config_from_dict(d), tmp_path / "a", env=ONE)
    _spiky(trainer, {5: 100.0, 7: float("nan")})
    trainer._it = iter(trainer.loader)
    for _ in range(5):
        trainer.train_step()
    before = {k: v.clone() for k, v in trainer.model.module.state_dict().items()}
    moments = {id(p): s["exp_avg"].clone() for p, s in trainer.optimizer.state.items()}
    assert trainer.train_step() is None  # the spike: nothing moves
    assert trainer.counters.step == 5
    assert all(torch.equal(v, trainer.model.module.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(s["exp_avg"], moments[id(p)]) for p, s in trainer.optimizer.state.items())
    assert trainer.train_step() is not None and trainer.counters.step == 6
    with pytest.raises(FlmError, match=r"2 steps skipped by train.spike \(max_events = 1\), the last for non-finite"):
        trainer.train_step()
    events = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if r.get("event") == "spike skipped"]
    assert [e["step"] for e in events] == [5, 6] and "above 2 x the running mean" in events[0]["reason"]
