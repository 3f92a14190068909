"""A performance model of one 3D-parallel training step (flm.scaling.perf.step), the layout search on top of
it (flm.scaling.perf.layout) and what `flm plan layout` prints (flm.scaling.perf.report). See
docs/performance.md for the model, its constants and how it compares with published runs."""
