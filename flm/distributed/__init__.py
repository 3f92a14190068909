"""3D parallelism on torch.distributed's own engine, applied to a plain FLM from outside (torchtitan's pattern).

- ``mesh``: ``ParallelDims`` (pp, dp, tp from ``[parallel]`` and the world size, with the checks a layout
  must pass before anything trains) and the ("pp", "dp", "tp") DeviceMesh.
- ``tensor_parallel``: DTensor tensor parallelism (column/row-wise projections, vocabulary-parallel tied
  embedding and readout, optional sequence parallelism) and the growth masks of a sharded model.
- ``init``: meta-device construction, then per-tensor-seeded values, identical for every layout.
- ``parallelize``: the fixed order TP -> activation checkpointing -> compile -> FSDP2.
- ``clip``: gradient-norm clipping over any mix of sharded, replicated and pipeline-staged gradients.
- ``pipeline``: pipeline parallelism (``torch.distributed.pipelining``).
"""
