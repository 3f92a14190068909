"""ParallelDims: dp = -1 fills the world; a layout or a (grown) model shape it cannot split is one FlmError line
naming the key and the fix. The [parallel] and train keys of 3-D training are accepted."""

from __future__ import annotations

import pytest

from flm.config import GrowthConfig, ModelConfig, ParallelConfig, TrainConfig, config_from_dict
from flm.distributed.mesh import ParallelDims, check_layout
from flm.errors import FlmError
from flm.stages import grow_shape

MODEL = ModelConfig(vocab_size=1000, d_model=64, n_layers=4, n_heads=4, d_ff=192)  # padded vocabulary 1024


def dims(world: int, **parallel) -> ParallelDims:
    return ParallelDims.from_config(ParallelConfig(**parallel), world)


def test_dp_minus_one_fills_the_rest():
    assert dims(8, tp=2, pp=2) == ParallelDims(pp=2, dp=2, tp=2, world_size=8, microbatches=2)
    assert dims(1) == ParallelDims(pp=1, dp=1, tp=1, world_size=1)
    assert dims(4, dp=2, tp=2).dp == 2
    assert not dims(1).distributed and dims(2, tp=2).distributed


@pytest.mark.parametrize(
    ("world", "parallel", "words"),
    [
        (6, {"tp": 4}, ["parallel: pp·tp = 1·4 = 4 does not divide the 6 processes", "parallel.tp"]),
        (8, {"tp": 2, "dp": 2}, ["pp·dp·tp = 1·2·2 = 4 but 8 processes", "set parallel.dp = -1"]),
        (2, {"pp": 2, "tp": 2, "dp": 1}, ["= 4 but 2 processes were started"]),
    ],
)
def test_layout_that_does_not_fit_the_world(world, parallel, words):
    with pytest.raises(FlmError) as e:
        dims(world, **parallel)
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize(
    ("parallel", "model", "words"),
    [
        ({"tp": 8}, {}, ["parallel.tp = 8 does not divide model.n_heads = 4", "pick parallel.tp from 1, 2, 4"]),
        ({"tp": 4}, {"d_ff": 190}, ["parallel.tp = 4 does not divide model.d_ff = 190", "1, 2, 5"]),
        ({"pp": 8}, {}, ["parallel.pp = 8 makes 8 pipeline stages but model.n_layers = 4", "set parallel.pp <= 4"]),
    ],
)
def test_model_the_layout_cannot_split(parallel, model, words):
    cfg = ModelConfig(**(MODEL.model_dump() | model))
    with pytest.raises(FlmError) as e:
        dims(8, **parallel).check_model(cfg)
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_padded_vocabulary_tp_does_not_divide():
    cfg = ModelConfig(vocab_size=100, d_model=48, n_layers=2, n_heads=3, d_ff=96)  # padded vocabulary 128
    with pytest.raises(FlmError, match=r"parallel.tp = 3 does not divide the padded vocabulary \(128 = "
                                       r"model.vocab_size 100 rounded up to 128\): pick parallel.tp from 1, 2, 4"):
        ParallelDims(pp=1, dp=1, tp=3, world_size=3).check_model(cfg)


def test_growth_step_tp_cannot_divide_is_caught_per_stage():
    grown = grow_shape(GrowthConfig(n_heads=6), MODEL, where="stages[1].grow")
    check_layout(ParallelConfig(tp=2), 4, MODEL)  # the first stage splits
    with pytest.raises(FlmError) as e:
        check_layout(ParallelConfig(tp=4), 4, grown, where="stages[1].parallel", model_key="stages[1] model")
    assert str(e.value).startswith("stages[1].parallel.tp = 4 does not divide stages[1] model.n_heads = 6")


def test_sequence_parallel_needs_tp_to_divide_the_sequence():
    layout = dims(2, tp=2, sequence_parallel=True)
    layout.check_model(MODEL, seq_len=64)
    with pytest.raises(FlmError, match="sequence_parallel shards the sequence .63 tokens. over tp = 2"):
        layout.check_model(MODEL, seq_len=63)


def test_config_accepts_3d_keys():
    cfg = config_from_dict({
        "parallel": {"tp": 2, "pp": 2, "dp": -1, "sequence_parallel": True, "pp_schedule": "interleaved_1f1b",
                     "microbatches": 8},
        "train": {"activation_checkpointing": "selective"},
        "stages": [{"steps": 10}, {"steps": 10, "grow": {"d_model": 256}, "parallel": {"tp": 4, "pp": 1}}],
    })
    assert (cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.microbatches) == (2, 2, 8)
    assert cfg.stages[1].parallel.tp == 4 and cfg.stages[1].parallel.microbatches is None
    assert TrainConfig().activation_checkpointing == "none" and ParallelConfig().pp_schedule == "1f1b"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"parallel": {"dp": 0}}, "parallel.dp = 0: give a positive degree, or -1"),
        ({"train": {"activation_checkpointing": "some"}}, "train.activation_checkpointing"),
        ({"parallel": {"pp_schedule": "zb"}}, "parallel.pp_schedule"),
    ],
)
def test_config_refuses_bad_3d_keys(data, words):
    with pytest.raises(FlmError, match=words.replace(".", r"\.")):
        config_from_dict(data)
