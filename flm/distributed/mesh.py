"""The layout of a run: how many pipeline stages (pp), data-parallel replicas (dp) and tensor-parallel shards
(tp), and the device mesh that holds them.

``ParallelDims.from_config`` reads ``[parallel]`` (or a stage's ``parallel = {...}``) and the world size;
``dp = -1`` takes what pp·tp leave. ``check_model`` refuses a model shape the layout cannot split (tp must
divide n_heads, d_ff and the padded vocabulary; pp at most n_layers): the run preflight calls it for every
stage, so a growth step to a shape tp cannot divide stops the run before anything trains or is written.

The mesh is always 3-D, ("pp", "dp", "tp") in that order (tp innermost, so a tensor-parallel group is the
neighbouring ranks, on one node when there is more than one). Unlike torchtitan we keep the size-1
dimensions: ``mesh["tp"]`` exists in every layout and code never asks whether a dimension is there; a
parallelism whose degree is 1 is simply not applied (``parallelize`` checks the degree, not the mesh).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from flm.config import ModelConfig, ParallelConfig
from flm.distributed.pipeline import check_pipeline
from flm.errors import FlmError

MESH_DIMS = ("pp", "dp", "tp")


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


@dataclass(frozen=True)
class ParallelDims:
    pp: int
    dp: int
    tp: int
    world_size: int
    sequence_parallel: bool = False
    pp_schedule: str = "1f1b"
    microbatches: int = 1  # pipeline micro-batches per step (parallel.microbatches, default pp)

    @classmethod
    def from_config(cls, parallel: ParallelConfig, world_size: int, where: str = "parallel") -> ParallelDims:
        """The layout of ``parallel`` on ``world_size`` processes; ``where`` names the config table in errors
        ("parallel", "stages[2].parallel")."""
        pp, tp, dp = parallel.pp, parallel.tp, parallel.dp
        # in one process, every stage's layout can be set aside at once (flm run/train --layout single)
        single = "; or run every stage in this one process: --layout single" if world_size == 1 else ""
        if dp == -1:
            if world_size % (pp * tp):
                raise FlmError(
                    f"{where}: pp·tp = {pp}·{tp} = {pp * tp} does not divide the {world_size} processes started; "
                    f"start a multiple of {pp * tp} processes, or change {where}.tp / {where}.pp{single}"
                )
            dp = world_size // (pp * tp)
        elif pp * dp * tp != world_size:
            raise FlmError(
                f"{where}: pp·dp·tp = {pp}·{dp}·{tp} = {pp * dp * tp} but {world_size} processes were started; "
                f"set {where}.dp = -1 (fills the rest) or start {pp * dp * tp} processes{single}"
            )
        return cls(pp=pp, dp=dp, tp=tp, world_size=world_size, sequence_parallel=parallel.sequence_parallel,
                   pp_schedule=parallel.pp_schedule, microbatches=parallel.microbatches or pp)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def build_mesh(self, device_type: str) -> DeviceMesh:
        """The ("pp", "dp", "tp") mesh over the initialised default process group (size-1 dims kept)."""
        return init_device_mesh(device_type, (self.pp, self.dp, self.tp), mesh_dim_names=MESH_DIMS)

    def check_model(self, model: ModelConfig, seq_len: int | None = None, where: str = "parallel",
                    model_key: str = "model", batch: int | None = None) -> None:
        """Refuse a model (or a grown stage's model) this layout cannot split; one line naming the keys.

        ``model_key`` names the model in messages (e.g. "stages[2] (grown) model"); ``batch`` is the global
        batch (sequences per step), which pipeline micro-batches must divide on each data-parallel rank."""
        tp = self.tp
        for key, size in (("n_heads", model.n_heads), ("d_ff", model.d_ff)):
            assert size is not None
            if size % tp:
                raise FlmError(
                    f"{where}.tp = {tp} does not divide {model_key}.{key} = {size}: tensor parallelism splits "
                    f"{key} evenly; pick {where}.tp from {_divisors(size)} or change {key}"
                )
        vocab = model.padded_vocab_size
        if vocab % tp:
            raise FlmError(
                f"{where}.tp = {tp} does not divide the padded vocabulary ({vocab} = {model_key}.vocab_size "
                f"{model.vocab_size} rounded up to 128): pick {where}.tp from {_divisors(vocab)}"
            )
        if batch is not None and batch % self.dp:
            raise FlmError(
                f"train.batch_size ({batch}) does not split over the {self.dp} data-parallel ranks of {where}; "
                f"make it a multiple of {self.dp}"
            )
        if self.pp > 1:
            per_dp = None if batch is None else batch // self.dp
            check_pipeline(model.n_layers, self.pp, self.pp_schedule, self.microbatches, per_dp, where, model_key)
            if self.sequence_parallel and tp > 1:
                raise FlmError(
                    f"{where}.sequence_parallel with pp = {self.pp}: pipeline stages exchange whole hidden states, "
                    f"not sequence shards; set {where}.sequence_parallel = false (or pp = 1)"
                )
        if self.sequence_parallel and tp > 1 and seq_len is not None and seq_len % tp:
            raise FlmError(
                f"{where}.sequence_parallel shards the sequence ({seq_len} tokens) over tp = {tp}, which does not "
                f"divide it; pick a train.seq_len that is a multiple of {tp}, or sequence_parallel = false"
            )


def check_layout(parallel: ParallelConfig, world_size: int, model: ModelConfig, seq_len: int | None = None,
                 where: str = "parallel", model_key: str = "model", batch: int | None = None) -> ParallelDims:
    """``ParallelDims.from_config`` then ``check_model``: what the run preflight calls once per stage (with the
    stage's own parallel table and grown model), before anything is written."""
    dims = ParallelDims.from_config(parallel, world_size, where)
    dims.check_model(model, seq_len, where, model_key, batch)
    return dims
