"""Progressive training: train stage 1, grow (MSG), train stage 2, grow, ... as FLM-101B did.

Run folder:
    config.toml       the whole plan
    metrics.jsonl     every stage's log lines, tagged with "stage"
    stage1/checkpoints/step_*/ ...   one checkpoint folder per stage (the last is the stage's final state)
    report.md, loss.png

Each stage starts from the previous stage's *final checkpoint*: the grow operators (flm.growth) turn its
weights and Adam moments into the bigger model's, and the masks ramp in over ``grow.ramp_steps``. Going
through the checkpoint (as FLM-101B did, "extending the model structures offline and reloading") makes an
uninterrupted run and one resumed at a stage boundary compute exactly the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flm.checkpoint import latest_checkpoint, load_checkpoint
from flm.checkpoint.manager import verify_checkpoint
from flm.checkpoint.stage_init import StageInit
from flm.config import RunConfig, config_from_dict, config_to_dict
from flm.distributed.env import DistEnv, barrier, init_distributed
from flm.errors import FlmError
from flm.flops import flops_per_token
from flm.growth.baseline_stage import baseline_init
from flm.growth.bump import EVENT, bump_lines, bump_record, no_gain_lines
from flm.growth.offline import GrownTensors, grown_tensors
from flm.io import atomic_write
from flm.stages import Stage, resolve_stages
from flm.train.loop import train_stage
from flm.train.metrics import MetricsLog, read_metrics
from flm.train.plot import plot_runs
from flm.train.schedule import stage_schedules
from flm.train.setup import preflight_plan
from flm.train.spike import ROLLED_BACK, SKIPPED, describe


def _final_checkpoint(run_dir: Path, stage: Stage) -> Path | None:
    latest = latest_checkpoint(run_dir / stage.folder)
    if latest is None:
        return None
    state = json.loads((latest / "trainer.json").read_text())
    return latest if state["step"] >= stage.steps else None


def _grown_init(prev_ckpt: Path, stage: Stage, seed: int, env: DistEnv) -> StageInit:
    """The next stage's start from the previous stage's final checkpoint (full or sharded): weights and
    moments grown lazily, tensor by tensor, each rank keeping its shards under the new stage's layout."""
    verify_checkpoint(env, prev_ckpt)  # the ranks split the hashing
    data, prev_cfg = load_checkpoint(prev_ckpt, verify=False, tensors=False)
    assert stage.growth is not None
    if data.growth:
        raise FlmError(
            f"{prev_ckpt}: the previous stage ended mid-ramp; make its ramp_steps shorter than the stage"
        )
    if stage.growth.method != "msg":  # a literature baseline: in memory, fresh optimizer, no masks
        return baseline_init(prev_ckpt, stage, seed)
    plan, weights, moments = grown_tensors(prev_ckpt, prev_cfg.model, stage.growth, seed)
    if plan.new != stage.model:
        raise FlmError(f"stage {stage.index}: growth gives {plan.new.shape()}, the plan says {stage.model.shape()}")
    tr = data.trainer
    return StageInit(
        model_state=weights,
        optim_tensors=moments or {},
        optim_step=int(data.optim_meta.get("step", 0)) if moments else 0,
        # old tensors keep their own counts (renamed as blocks move); new blocks have no state: fresh, step 0
        optim_param_steps=plan.carried_steps(data.optim_meta.get("step", 0), data.optim_meta.get("param_steps"))
        if moments else {},
        growth_state=plan.mask_state(),
        ramp={"step": 0, "total": stage.growth.ramp_steps},
        tokens=tr["tokens"],
        flops=tr["flops"],
        loader_state=tr.get("loader"),
    )


def run_plan(cfg: RunConfig, out_dir: str | Path, *, resume: bool = False, env: DistEnv | None = None) -> Path:
    """Train every stage of ``cfg``, growing in between; write report.md and loss.png. Returns out_dir."""
    out_dir = Path(out_dir)
    stages = resolve_stages(cfg)
    schedules = stage_schedules(cfg, stages)
    env = env or init_distributed(cfg.train, cfg.parallel)
    data = preflight_plan(cfg, stages, env, out_dir, resume)  # writes config.toml (a new run)
    prev: Path | None = None
    for stage, schedule, stage_data in zip(stages, schedules, data):
        final = _final_checkpoint(out_dir, stage)
        if final is not None:  # finished before a resume
            prev = final
            _log_bump(out_dir, stages, stage, env)  # unless the kill came right before its record
            continue
        partial = latest_checkpoint(out_dir / stage.folder)
        init = None
        if partial is None:
            MetricsLog(out_dir / "metrics.jsonl", enabled=env.is_main).truncate_after(-1, stage.index)
            if stage.growth is not None:
                assert prev is not None
                init = _grown_init(prev, stage, seed=cfg.train.seed + stage.index, env=env)
        train_stage(
            stage.cfg, out_dir, resume=partial is not None, env=env.with_layout(stage.parallel, stage.parallel_where),
            stage=stage.index, init=init, schedule=schedule, ckpt_dir=out_dir / stage.folder,
            save_config_file=False, eval_at_start=True, data=stage_data,
        )
        if init is not None:  # the grown tensors are in the trained stage's checkpoints now
            for tensors in (init.model_state, init.optim_tensors):
                if isinstance(tensors, GrownTensors):
                    tensors.close()
        prev = _final_checkpoint(out_dir, stage)
        _log_bump(out_dir, stages, stage, env)
    if env.is_main:
        write_report(out_dir, stages)
        plot_runs([out_dir], out_dir / "loss.png")
    barrier(env)
    return out_dir


def _log_bump(out_dir: Path, stages: list[Stage], stage: Stage, env: DistEnv) -> None:
    """Append the loss bump of ``stage``'s growth to metrics.jsonl, once: after the stage's last checkpoint, or
    on the resume of a run killed between that checkpoint and this record."""
    rows = read_metrics(out_dir / "metrics.jsonl") if env.is_main else []
    record = bump_record(rows, stages, stage) if env.is_main else None
    logged = any(r.get("event") == EVENT and r.get("stage") == stage.index for r in rows)
    if record is not None and not logged:
        MetricsLog(out_dir / "metrics.jsonl").write(record)


def scratch_config(cfg: RunConfig, match: str = "tokens") -> RunConfig:
    """The from-scratch baseline of a plan: the final shape, trained for the plan's tokens or FLOPs, with
    the plan's own peak LR and warmup."""
    stages = resolve_stages(cfg)
    first, final = stages[0], stages[-1].cfg
    seq = cfg.seq_len
    tokens = sum(s.steps * s.batch_size * seq for s in stages)  # trained: a tokens-stage rounds up to steps
    if match == "flops":
        flops = sum(s.steps * s.batch_size * seq * flops_per_token(s.model, seq) for s in stages)
        tokens = int(flops / flops_per_token(final.model, seq))
    elif match != "tokens":
        raise FlmError(f"--scratch {match!r}: choose 'tokens' or 'flops'")
    data = config_to_dict(final)
    data["name"] = f"{cfg.name}-scratch-{match}"
    data["train"]["steps"] = max(1, round(tokens / (final.train.batch_size * seq)))
    data["optim"]["lr"] = first.lr or cfg.optim.lr
    data["optim"]["warmup_steps"] = cfg.optim.warmup_steps if first.warmup_steps is None else first.warmup_steps
    return config_from_dict(data, where="scratch baseline")


def stage_summaries(run_dir: Path) -> list[dict[str, Any]]:
    """Per stage, from metrics.jsonl: shape, tokens, FLOPs, time, losses, and the loss across growth."""
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    out: list[dict[str, Any]] = []
    for stage in sorted({r.get("stage", 0) for r in rows}):
        rs = [r for r in rows if r.get("stage", 0) == stage]
        train = [r for r in rs if "loss" in r]
        vals = [r for r in rs if "val_loss" in r]
        first = rs[0]
        out.append({
            "stage": stage,
            "d_model": first.get("d_model"),
            "n_layers": first.get("n_layers"),
            "tokens_end": rs[-1]["tokens"],
            "flops_end": rs[-1]["flops"],
            "seconds": max(r.get("time", 0.0) for r in rs),
            "steps": rs[-1]["step"],
            "train_loss": train[-1]["loss"] if train else None,
            "val_start": vals[0]["val_loss"] if vals and vals[0]["step"] == 0 else None,
            "val_end": vals[-1]["val_loss"] if vals else None,
        })
    return out


def write_report(run_dir: Path, stages: list[Stage]) -> None:
    sums = {s["stage"]: s for s in stage_summaries(run_dir)}
    lines = ["# Progressive run report", "", "| stage | shape (d, L, heads, d_ff) | params | steps | tokens | "
             "FLOPs | time (s) | train loss | val loss (start -> end) |", "|---|---|---|---|---|---|---|---|---|"]
    prev_tokens, prev_flops, total_time = 0, 0.0, 0.0
    for stage in stages:
        s = sums.get(stage.index)
        if s is None:
            continue
        m = stage.model
        tokens, flops = s["tokens_end"] - prev_tokens, s["flops_end"] - prev_flops
        prev_tokens, prev_flops = s["tokens_end"], s["flops_end"]
        total_time += s["seconds"]
        start = f"{s['val_start']:.4f}" if s["val_start"] is not None else "-"
        lines.append(
            f"| {stage.index} | {m.d_model}, {m.n_layers}, {m.n_heads}, {m.d_ff} | {m.num_params() / 1e6:.2f}M | "
            f"{s['steps']} | {tokens:,} | {flops:.3g} | {s['seconds']:.0f} | {s['train_loss']:.4f} | "
            f"{start} -> {s['val_end']:.4f} |"
        )
    lines += ["", f"Total: {prev_tokens:,} tokens, {prev_flops:.3g} FLOPs, {total_time:.0f} s.", ""]
    ordered = [sums[s.index] for s in stages if s.index in sums]
    for a, b in zip(ordered, ordered[1:]):
        if a["val_end"] is not None and b["val_start"] is not None:
            change = (b["val_start"] - a["val_end"]) / a["val_end"] * 100
            lines.append(
                f"- Growth into stage {b['stage']}: val loss {a['val_end']:.4f} before, {b['val_start']:.4f} "
                f"right after ({change:+.4f}%)."
            )
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    lines += bump_lines(rows, stages)
    lines += no_gain_lines(rows, stages)
    spikes = [r for r in rows if r.get("event") in (SKIPPED, ROLLED_BACK)]
    lines += [f"- {describe(r)} (train.spike)." for r in spikes]
    lines += ["", "![loss](loss.png)", ""]
    atomic_write(Path(run_dir) / "report.md", "\n".join(lines))
