"""An flm stage as the performance model sees it: its shape and the layout its config gives."""

from __future__ import annotations

from flm.config import SELECTIVE_EVERY, ModelConfig, RunConfig
from flm.scaling.perf.step import DpMode, Layout, Shape
from flm.stages import Stage

AC_RECOMPUTE = {"none": 0.0, "selective": 1.0 / SELECTIVE_EVERY, "full": 1.0}  # flm's modes: share recomputed
FLM_SCHEDULE = {"gpipe": "gpipe", "1f1b": "1f1b", "interleaved": "interleaved_1f1b"}


def shape_of(m: ModelConfig, seq_len: int) -> Shape:
    """The perf model's view of an flm model: GeLU MLP, rotary (and xPos) as PyTorch ops, tied embeddings."""
    return Shape(d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads, head_dim=int(m.head_dim or 0),
                 d_ff=int(m.d_ff or 0), vocab=m.padded_vocab_size, seq_len=seq_len, rotary="eager")


def stage_layout(cfg: RunConfig, stage: Stage, n_gpus: int, dp_mode: DpMode,
                 recompute: float | None = None) -> Layout | None:
    """The layout ``stage``'s config gives on ``n_gpus`` GPUs (None when its tp·pp·dp is another count):
    micro-batch from parallel.microbatches (pipeline) or train.micro_batch_size, recompute from
    train.activation_checkpointing unless ``recompute`` (a share of blocks) is given."""
    par, tc = stage.parallel, stage.cfg.train
    dp = par.dp if par.dp > 0 else n_gpus // (par.tp * par.pp)
    if par.tp * par.pp * dp != n_gpus or stage.batch_size % dp:
        return None
    per_dp = stage.batch_size // dp
    mb = per_dp // (par.microbatches or par.pp) if par.pp > 1 else (tc.micro_batch_size or per_dp)
    sched = {"gpipe": "gpipe", "1f1b": "1f1b", "interleaved_1f1b": "interleaved"}[par.pp_schedule]
    rc = AC_RECOMPUTE[tc.activation_checkpointing] if recompute is None else recompute
    return Layout(par.tp, par.pp, dp, microbatch=max(1, mb), schedule=sched,  # type: ignore[arg-type]
                  sequence_parallel=par.sequence_parallel, recompute=rc, dp_mode=dp_mode)
