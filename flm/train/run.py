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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flm import checkpoint as ck
from flm.config import GrowthConfig, RunConfig, config_from_dict, config_to_dict
from flm.errors import FlmError
from flm.parallel import DistEnv, barrier, init_distributed, use_bf16
from flm.train.loop import StageInit, check_out_dir, rank0_first, train_stage, write_run_config
from flm.train.metrics import MetricsLog, read_metrics
from flm.train.schedule import CosineSchedule, StageSchedule


@dataclass
class StagePlan:
    index: int  # 1-based, as people count stages
    cfg: RunConfig  # a single-stage config: this stage's model, steps, batch, LR
    steps: int
    growth: GrowthConfig | None
    schedule: StageSchedule

    @property
    def folder(self) -> str:
        return f"stage{self.index}"


def plan_stages(cfg: RunConfig) -> list[StagePlan]:
    """Validate the whole plan before any training: shapes, growth specs, steps."""
    models = cfg.stage_models()  # raises FlmError on a bad growth spec
    stages = cfg.stages or [None]
    plans_raw: list[tuple[RunConfig, int]] = []
    for i, (st, model) in enumerate(zip(stages, models)):
        data = config_to_dict(cfg)
        data.pop("stages", None)
        data["model"] = config_to_dict(model)
        train, optim = data["train"], data["optim"]
        if st is not None:
            if st.batch_size:
                train["batch_size"] = st.batch_size
            if st.lr:
                optim["lr"] = st.lr
            if st.parallel:
                data["parallel"] = config_to_dict(st.parallel)
            seq = cfg.seq_len
            if st.steps:
                steps = st.steps
            elif st.tokens:
                steps = math.ceil(st.tokens / (train["batch_size"] * seq))
            else:
                raise FlmError(f"stages[{i}] sets neither steps nor tokens; give one, e.g. steps = 200")
            train["steps"] = steps
        stage_cfg = config_from_dict(data, where=f"stages[{i}]")
        plans_raw.append((stage_cfg, stage_cfg.train.steps))

    total = sum(s for _, s in plans_raw)
    oc = cfg.optim
    plans: list[StagePlan] = []
    start = 0
    for i, (stage_cfg, steps) in enumerate(plans_raw):
        st = cfg.stages[i] if cfg.stages else None
        lr = st.lr if st and st.lr else None
        warm = st.warmup_steps if st and st.warmup_steps is not None else None
        st_growth = st.grow if st else None
        if st_growth is not None and st_growth.ramp_steps > steps:
            raise FlmError(
                f"stages[{i}].grow.ramp_steps ({st_growth.ramp_steps}) is longer than the stage ({steps} steps): "
                "the masks would still be on when the next stage starts; shorten the ramp"
            )
        if cfg.lr_mode == "inherit":
            peak = cfg.stages[0].lr if cfg.stages and cfg.stages[0].lr else oc.lr
            warm0 = cfg.stages[0].warmup_steps if cfg.stages and cfg.stages[0].warmup_steps is not None else None
            base = CosineSchedule(peak, oc.min_lr, oc.warmup_steps if warm0 is None else warm0, total, offset=start)
            sched = StageSchedule(base, start_lr=lr if i > 0 else None, rewarmup=(warm or 0) if i > 0 else 0)
        else:
            base = CosineSchedule(lr or oc.lr, oc.min_lr, oc.warmup_steps if warm is None else warm, steps)
            sched = StageSchedule(base)
        plans.append(StagePlan(i + 1, stage_cfg, steps, st.grow if st else None, sched))
        start += steps
    return plans


def _preflight(plans: list[StagePlan], env: DistEnv) -> None:
    """What would otherwise fail in the middle of the run: batch layout per stage, the tokenizer's size
    against the model's vocabulary (this prepares the data, which is cached), bf16 on a CPU."""
    from flm.data.loader import TokenLoader
    from flm.data.prepare import prepare_data
    from flm.data.tokenizer import check_vocab
    from flm.growth.plan import make_plan

    for p in plans:
        tc = p.cfg.train
        per_rank, rem = divmod(tc.batch_size, env.world_size)
        if rem or (tc.micro_batch_size and per_rank % tc.micro_batch_size):
            raise FlmError(
                f"stage {p.index}: batch_size {tc.batch_size} does not split into {env.world_size} ranks of "
                f"micro_batch_size {tc.micro_batch_size or per_rank}; change stages[{p.index - 1}].batch_size"
            )
        use_bf16(tc, env.device)  # refuses bf16 on a CPU now, not at the stage that asks for it
    for prev, p in zip(plans, plans[1:]):  # depth positions, copy sources, ...: the whole growth plan
        assert p.growth is not None
        try:
            make_plan(prev.cfg.model, p.growth)
        except FlmError as e:
            raise FlmError(f"stages[{p.index - 1}]: {e}") from None
    first = plans[0].cfg
    prepared = rank0_first(env, lambda: prepare_data(first.data, progress=first.train.progress),
                           lambda: prepare_data(first.data, progress=False))
    for p in plans:
        check_vocab(prepared.tokenizer, p.cfg.model)
        TokenLoader(prepared, "valid", seq_len=p.cfg.seq_len, batch_size=1)  # val loss frames every growth


def _final_checkpoint(run_dir: Path, plan: StagePlan) -> Path | None:
    latest = ck.latest_checkpoint(run_dir / plan.folder)
    if latest is None:
        return None
    state = json.loads((latest / "trainer.json").read_text())
    return latest if state["step"] >= plan.steps else None


def _grown_init(prev_ckpt: Path, plan: StagePlan, seed: int) -> StageInit:
    from flm.growth.ops import grow

    data, prev_cfg = ck.load_checkpoint(prev_ckpt)
    assert plan.growth is not None
    if data.growth:
        raise FlmError(
            f"{prev_ckpt}: the previous stage ended mid-ramp; make its ramp_steps shorter than the stage"
        )
    res = grow(prev_cfg.model, data.model, plan.growth, data.optim_tensors or None, seed=seed)
    if res.cfg != plan.cfg.model:
        raise FlmError(f"stage {plan.index}: growth gives {res.cfg.shape()}, the plan says {plan.cfg.model.shape()}")
    tr = data.trainer
    return StageInit(
        model_state=res.state_dict,
        optim_tensors=res.optim_state or {},
        optim_step=int(data.optim_meta.get("step", 0)) if res.optim_state else 0,
        growth_state=res.mask_state,
        ramp={"step": 0, "total": plan.growth.ramp_steps},
        tokens=tr["tokens"],
        flops=tr["flops"],
        loader_state=tr.get("loader"),
    )


def _changed_keys(a: object, b: object, prefix: str = "") -> list[str]:
    """Dotted keys (list items as key[i]) whose values differ between two config dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b), key=str)
                for k in _changed_keys(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [k for i, (x, y) in enumerate(zip(a, b)) for k in _changed_keys(x, y, f"{prefix}[{i}]")]
    return [] if a == b else [prefix or "(the whole config)"]


def run_plan(cfg: RunConfig, out_dir: str | Path, *, resume: bool = False, env: DistEnv | None = None) -> Path:
    """Train every stage of ``cfg``, growing in between; write report.md and loss.png. Returns out_dir."""
    out_dir = Path(out_dir)
    plans = plan_stages(cfg)
    env = env or init_distributed(cfg.train, cfg.parallel)
    if env.is_main:
        if resume and (out_dir / "config.toml").is_file():
            old = ck.read_config(out_dir / "config.toml")
            changed = _changed_keys(config_to_dict(old), config_to_dict(cfg))
            if changed:
                raise FlmError(
                    f"--resume: the given config differs from {out_dir}/config.toml in {', '.join(changed[:4])}"
                    f"{' ...' if len(changed) > 4 else ''}; resume with the run's own config (or drop --resume "
                    "and pick a new --out)"
                )
        elif resume:
            raise FlmError(f"--resume: {out_dir} holds no run to resume (no config.toml); drop --resume")
        else:
            check_out_dir(out_dir, cfg, resume=False)
    barrier(env)
    _preflight(plans, env)
    if env.is_main and not resume:
        write_run_config(out_dir, cfg)
    barrier(env)
    prev: Path | None = None
    for plan in plans:
        final = _final_checkpoint(out_dir, plan)
        if final is not None:  # finished before a resume
            prev = final
            continue
        partial = ck.latest_checkpoint(out_dir / plan.folder)
        init = None
        if partial is None:
            MetricsLog(out_dir / "metrics.jsonl", enabled=env.is_main).truncate_after(-1, plan.index)
            if plan.growth is not None:
                assert prev is not None
                init = _grown_init(prev, plan, seed=cfg.train.seed + plan.index)
        train_stage(
            plan.cfg, out_dir, resume=partial is not None, env=env, stage=plan.index, init=init,
            schedule=plan.schedule, ckpt_dir=out_dir / plan.folder, save_config_file=False,
            eval_at_start=True,
        )
        prev = _final_checkpoint(out_dir, plan)
    if env.is_main:
        write_report(out_dir, plans)
        from flm.train.plot import plot_runs

        plot_runs([out_dir], out_dir / "loss.png")
    barrier(env)
    return out_dir


def scratch_config(cfg: RunConfig, match: str = "tokens") -> RunConfig:
    """The from-scratch baseline of a plan: the final shape, trained for the plan's tokens or FLOPs."""
    from flm.scaling.cost import flops_per_token

    plans = plan_stages(cfg)
    final = plans[-1].cfg
    seq = cfg.seq_len
    tokens = sum(p.steps * p.cfg.train.batch_size * seq for p in plans)
    if match == "flops":
        flops = sum(p.steps * p.cfg.train.batch_size * seq * flops_per_token(p.cfg.model, seq) for p in plans)
        tokens = int(flops / flops_per_token(final.model, seq))
    elif match != "tokens":
        raise FlmError(f"--scratch {match!r}: choose 'tokens' or 'flops'")
    data = config_to_dict(final)
    data["name"] = f"{cfg.name}-scratch-{match}"
    data["train"]["steps"] = max(1, round(tokens / (final.train.batch_size * seq)))
    first = cfg.stages[0] if cfg.stages else None  # the plan's own peak LR and warmup
    data["optim"]["lr"] = first.lr if first and first.lr else cfg.optim.lr
    data["optim"]["warmup_steps"] = (
        first.warmup_steps if first and first.warmup_steps is not None else cfg.optim.warmup_steps
    )
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


def write_report(run_dir: Path, plans: list[StagePlan]) -> None:
    from flm.config import atomic_write

    sums = {s["stage"]: s for s in stage_summaries(run_dir)}
    lines = ["# Progressive run report", "", "| stage | shape (d, L, heads, d_ff) | params | steps | tokens | "
             "FLOPs | time (s) | train loss | val loss (start -> end) |", "|---|---|---|---|---|---|---|---|---|"]
    prev_tokens, prev_flops, total_time = 0, 0.0, 0.0
    for p in plans:
        s = sums.get(p.index)
        if s is None:
            continue
        m = p.cfg.model
        tokens, flops = s["tokens_end"] - prev_tokens, s["flops_end"] - prev_flops
        prev_tokens, prev_flops = s["tokens_end"], s["flops_end"]
        total_time += s["seconds"]
        start = f"{s['val_start']:.4f}" if s["val_start"] is not None else "-"
        lines.append(
            f"| {p.index} | {m.d_model}, {m.n_layers}, {m.n_heads}, {m.d_ff} | {m.num_params() / 1e6:.2f}M | "
            f"{s['steps']} | {tokens:,} | {flops:.3g} | {s['seconds']:.0f} | {s['train_loss']:.4f} | "
            f"{start} -> {s['val_end']:.4f} |"
        )
    lines += ["", f"Total: {prev_tokens:,} tokens, {prev_flops:.3g} FLOPs, {total_time:.0f} s.", ""]
    ordered = [sums[p.index] for p in plans if p.index in sums]
    for a, b in zip(ordered, ordered[1:]):
        if a["val_end"] is not None and b["val_start"] is not None:
            change = (b["val_start"] - a["val_end"]) / a["val_end"] * 100
            lines.append(
                f"- Growth into stage {b['stage']}: val loss {a['val_end']:.4f} before, {b['val_start']:.4f} "
                f"right after ({change:+.4f}%)."
            )
    lines += ["", "![loss](loss.png)", ""]
    atomic_write(Path(run_dir) / "report.md", "\n".join(lines))
