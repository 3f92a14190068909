"""Pipeline parallelism (flm.distributed.pipeline) on gloo, spawned CPU processes: every schedule under pp2,
1f1b under pp2·dp2 (FSDP2 over dp) and interleaved_1f1b under tp2·pp2 (meta init, ``parallelize``) match
one-process training on the same global batch (loss at each of 5 AdamW steps with μP groups and gradient
clipping, validation loss, final weights); the tied embedding's two copies stay bitwise equal; a grown model
(width, heads, FFN, depth; masks at m = 0) split in two gives the one-process logits, and trains through its
mask ramp. Plus the split itself and the layout checks, without processes.

Each spawned run is one fixture (module scope) shared by the tests that read its results.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from flm.config import GrowthConfig, ModelConfig, ParallelConfig, TrainConfig
from flm.distributed.init import materialize, meta_model
from flm.distributed.mesh import ParallelDims
from flm.distributed.parallelize import parallelize
from flm.distributed.pipeline import (
    Pipeline,
    check_layout,
    check_microbatches,
    check_pipeline,
    split_model,
    stage_layers,
)
from flm.errors import FlmError
from flm.growth import MaskRamp, grow
from flm.model import FLM
from flm.mup import param_groups

from ._harness import spawn

CFG = ModelConfig(vocab_size=200, d_model=32, n_layers=4, n_heads=4, max_seq_len=16, mup_base_width=16,
                  input_mult=1.5, output_mult=2.0)
BASE = CFG.model_copy(update={"n_layers": 2})  # grown to GROWTH below
GROWTH = GrowthConfig(d_model=48, d_ff=160, n_layers=4, depth_position="interleave", ramp_steps=4)
BATCH, SEQ, STEPS, LR, WD, CLIP, SEED = 8, 16, 5, 1e-2, 0.1, 0.5, 7
PLAIN_SCHEDULES = ("gpipe", "interleaved_1f1b")  # 1f1b trains the grown model through its ramp


# ----- shared by the parent (reference) and the workers ------------------------------------------------------
def batches(cfg: ModelConfig, n: int = STEPS + 1, seed: int = 1) -> list[tuple[torch.Tensor, ...]]:
    """``n`` global batches (tokens, targets, 0/1 loss mask with some zeros); the last one for validation."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=g)
        y = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=g)
        mk = (torch.rand(BATCH, SEQ, generator=g) > 0.2).float()
        out.append((x, y, mk))
    return out


def plain_model() -> FLM:
    """The initial weights every layout gets from ``materialize`` (per-name seeds)."""
    return materialize(meta_model(CFG), "cpu", SEED)


def base_model() -> FLM:
    """The model to grow, with biases and LayerNorms off their init so nothing matches by accident."""
    base = FLM(BASE)
    base.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in base.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    return base


def grown_model() -> FLM:
    """``base_model`` grown in width, heads, FFN and depth; masks loaded, m = 0."""
    res = grow(BASE, base_model().state_dict(), GROWTH, seed=3)
    model = FLM(res.cfg)
    model.load_state_dict(res.state_dict)
    model.load_growth_state(res.mask_state)
    return model


def reference_run(model: FLM, data: list, ramp: MaskRamp | None = None) -> dict:
    """One process: the trainer's step (fused masked loss over the batch, clip, μP AdamW), STEPS times."""
    opt = torch.optim.AdamW(param_groups(model, LR, WD), lr=LR, betas=(0.9, 0.95))
    losses = []
    for x, y, mk in data[:STEPS]:
        loss = model(x, targets=y, loss_weights=mk / mk.sum())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ramp is not None:
            ramp.step(model)
        losses.append(float(loss.detach()))
    x, y, mk = data[STEPS]
    with torch.no_grad():
        val = float(model.eval()(x, targets=y, loss_weights=mk).double())
    return {"losses": losses, "val": val, "state": {k: v.clone() for k, v in model.state_dict().items()}}


# ----- workers (spawned) ---------------------------------------------------------------------------------------
def _pipeline_run(pipe: Pipeline, data: list, dp_group=None, dp: int = 1, dp_rank: int = 0,
                  ramp: MaskRamp | None = None) -> dict:
    """The same steps as ``reference_run`` through the pipeline; this dp rank takes its rows of each batch."""
    opt = torch.optim.AdamW(pipe.param_groups(LR, WD), lr=LR, betas=(0.9, 0.95))
    losses = []
    for x, y, mk in data[:STEPS]:
        rows = slice(dp_rank * BATCH // dp, (dp_rank + 1) * BATCH // dp)
        loss = pipe.step(x[rows], y[rows], mk[rows], denom=float(mk.sum()) / dp)
        pipe.clip_grad_norm_(CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ramp is not None:
            ramp.step(pipe)
        if dp_group is not None:  # the trainer's report: mean over data-parallel ranks
            dist.all_reduce(loss, group=dp_group)
        losses.append(float(loss) / dp)
    x, y, mk = data[STEPS]
    pipe.eval()
    val = pipe.eval_loss(x[rows], y[rows], mk[rows])
    if dp_group is not None:
        dist.all_reduce(val, group=dp_group)
    return {"losses": losses, "val": float(val), "masks_left": pipe.growing}


def _tied(pipe: Pipeline) -> torch.Tensor | None:
    """The embedding (pp rank 0) or its readout copy (last pp rank), whole."""
    w = (pipe.first if pipe.first is not None else pipe.last).tok_emb.weight
    return (w.full_tensor() if isinstance(w, DTensor) else w).detach().clone()


def pp2_worker(rank: int, world: int, out: Path) -> None:
    """pp = 2: each schedule trains; the grown model's logits at m = 0; then the ramp trains (1f1b)."""
    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("pp",))
    cpu = torch.device("cpu")
    res: dict = {}
    for schedule in PLAIN_SCHEDULES:
        pipe = Pipeline(split_model(plain_model(), rank, 2, schedule), mesh, schedule, 4, cpu)
        res[schedule] = _pipeline_run(pipe, batches(CFG))
        res[schedule] |= {"state": pipe.full_state_dict(), "tied": _tied(pipe)}
    grown = grown_model()
    pipe = Pipeline(split_model(grown, rank, 2, "1f1b"), mesh, "1f1b", 2, cpu)
    x = batches(grown.cfg)[0][0]
    res["grown_logits"] = pipe.eval().forward(x)
    res["grown_masks"] = pipe.full_growth_state()
    pipe.train()
    res["1f1b"] = _pipeline_run(pipe, batches(grown.cfg), ramp=MaskRamp(GROWTH.ramp_steps))
    res["1f1b"] |= {"state": pipe.full_state_dict(), "tied": _tied(pipe)}
    torch.save(res, out / f"pp2_{rank}.pt")


def four_rank_worker(rank: int, world: int, out: Path) -> None:
    """pp2·dp2: FSDP2 on each stage module over the dp sub-mesh, 1f1b. Then tp2·pp2 the trainer's way: split
    on the meta device, ``parallelize`` each stage (tensor parallel), materialise, interleaved_1f1b."""
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("pp", "dp"))
    pp_rank, dp_rank = mesh.get_local_rank("pp"), mesh.get_local_rank("dp")
    parts = split_model(plain_model(), pp_rank, 2, "1f1b")
    for part in parts.values():
        for block in part.blocks.values():
            fully_shard(block, mesh=mesh["dp"])
        fully_shard(part, mesh=mesh["dp"])
    pipe = Pipeline(parts, mesh, "1f1b", 2, torch.device("cpu"))
    res = _pipeline_run(pipe, batches(CFG), mesh.get_group("dp"), 2, dp_rank)
    res |= {"state": pipe.full_state_dict(), "tied": _tied(pipe)}
    if dp_rank == 0:
        torch.save(res, out / f"pp2dp2_{pp_rank}.pt")

    dims = ParallelDims.from_config(ParallelConfig(tp=2, pp=2, dp=1), world)
    mesh = dims.build_mesh("cpu")
    pp_rank = mesh.get_local_rank("pp")
    parts = split_model(meta_model(CFG), pp_rank, 2, "interleaved_1f1b")
    for part in parts.values():
        materialize(parallelize(part, dims, mesh, TrainConfig()), "cpu", SEED)
    pipe = Pipeline(parts, mesh, "interleaved_1f1b", 2, torch.device("cpu"))
    res = _pipeline_run(pipe, batches(CFG))
    res |= {"state": pipe.full_state_dict(), "tied": _tied(pipe)}
    if mesh.get_local_rank("tp") == 0:
        torch.save(res, out / f"tp2pp2_{pp_rank}.pt")


# ----- fixtures: one spawned run each, then the references ----------------------------------------------------
@pytest.fixture(scope="module")
def pp2(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("pp2")
    spawn(pp2_worker, 2, folder)
    return [torch.load(folder / f"pp2_{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("four")
    spawn(four_rank_worker, 4, folder)
    return folder


@pytest.fixture(scope="module")
def reference() -> dict:
    return reference_run(plain_model(), batches(CFG))


def _assert_matches(ranks: list[dict], ref: dict) -> None:
    for r in ranks:  # every pp rank reports the same loss
        assert r["losses"] == pytest.approx(ref["losses"], rel=1e-4), (r["losses"], ref["losses"])
        assert r["val"] == pytest.approx(ref["val"], rel=1e-4)
    state = ranks[0]["state"]  # gathered on pp rank 0
    assert ranks[1]["state"] is None
    assert set(state) == set(ref["state"])  # the union of the stages is the one-process state dict
    for name, want in ref["state"].items():
        err = (state[name] - want).abs().max() / want.abs().max().clamp_min(1e-12)
        assert err <= 1e-4, (name, float(err))
    # the readout copy on the last stage is still bitwise the embedding on the first
    assert torch.equal(ranks[0]["tied"], ranks[1]["tied"])
    assert torch.equal(ranks[0]["tied"], ranks[0]["state"]["tok_emb.weight"])


# ----- tests ----------------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
@pytest.mark.parametrize("schedule", PLAIN_SCHEDULES)
def test_pp2_matches_one_process(pp2, reference, schedule) -> None:
    _assert_matches([r[schedule] for r in pp2], reference)


@pytest.mark.timeout(300)
def test_pp2_grown_model_logits_equal_one_process_at_m0(pp2) -> None:
    model = grown_model().eval()
    x = batches(model.cfg)[0][0]
    with torch.no_grad():
        want = model(x)
    assert pp2[0]["grown_logits"] is None  # only the last stage's rank has the output
    got = pp2[1]["grown_logits"]
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5
    masks = model.growth_state()  # every kind of mask and m = 0, gathered from both stages
    assert {k.split(".")[-1] for k in masks} >= {"grow_m", "hidden_new", "head_new", "ffn_new", "depth_new"}
    assert pp2[1]["grown_masks"] is None and set(pp2[0]["grown_masks"]) == set(masks)
    assert all(torch.equal(pp2[0]["grown_masks"][k], v) for k, v in masks.items())
    with torch.no_grad():  # and growth preserved the function: the logits of the model it grew from
        assert (got - base_model().eval()(x)).abs().max() <= 1e-5


@pytest.mark.timeout(300)
def test_pp2_1f1b_trains_grown_model_through_the_ramp(pp2) -> None:
    model = grown_model()
    ref = reference_run(model, batches(model.cfg), MaskRamp(GROWTH.ramp_steps))
    assert not model.growing
    assert not pp2[0]["1f1b"]["masks_left"] and not pp2[1]["1f1b"]["masks_left"]
    _assert_matches([r["1f1b"] for r in pp2], ref)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", ["pp2dp2", "tp2pp2"])
def test_pp2_with_fsdp2_or_tp_matches_one_process(four_ranks, reference, layout) -> None:
    _assert_matches([torch.load(four_ranks / f"{layout}_{r}.pt", weights_only=False) for r in range(2)], reference)


def test_stage_split_keeps_names_and_shares_nothing_but_values() -> None:
    model = plain_model()
    names = set(model.state_dict())
    emb = model.tok_emb.weight.detach().clone()
    parts = [split_model(plain_model(), r, 2, "interleaved_1f1b") for r in range(2)]
    stages = parts[0] | parts[1]
    assert sorted(stages) == [0, 1, 2, 3]
    assert [list(stages[s].blocks) for s in range(4)] == [["0"], ["1"], ["2"], ["3"]]
    assert stages[0].ln_f is None and stages[3].ln_f is not None
    assert stages[1].tok_emb is None and stages[2].tok_emb is None
    union = set().union(*(p.state_dict() for p in stages.values()))
    assert union == names
    first, last = stages[0].tok_emb.weight, stages[3].tok_emb.weight
    assert first is not last and torch.equal(first, last) and torch.equal(first, emb)
    assert stage_layers(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: check_layout(2, 3, "1f1b"), r"parallel.pp = 3 .* model.n_layers = 2.*set parallel.pp <= 2"),
        (lambda: check_layout(4, 3, "interleaved_1f1b"), r"6 pipeline stages .*parallel.pp <= 2 or .*'1f1b'"),
        (lambda: check_layout(4, 2, "zb"), r"parallel.pp_schedule = 'zb' is unknown"),
        (lambda: check_microbatches(3, 2, "gpipe", batch=8), r"parallel.microbatches = 3 does not divide .* 8"),
        (lambda: check_microbatches(1, 2, "1f1b"), r"parallel.microbatches = 1 .*set parallel.microbatches >= 2"),
        (lambda: check_microbatches(5, 2, "interleaved_1f1b"), r"parallel.microbatches = 5 .*multiple of 2"),
        (lambda: check_pipeline(4, 2, "gpipe", 0), r"parallel.microbatches = 0"),
        (lambda: split_model(plain_model(), 0, 8, "gpipe"), r"parallel.pp = 8 .* model.n_layers = 4"),
    ],
)
def test_bad_layouts_are_one_line_errors(call, match) -> None:
    with pytest.raises(FlmError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_meta_split_then_materialize_gives_the_one_process_weights() -> None:
    """The trainer's path for models larger than one device: split on the meta device, materialise each stage
    (per-name seeds): the stages hold the one-process initial weights, and the readout copy equals the
    embedding."""
    want = materialize(meta_model(CFG), "cpu", seed=5).state_dict()
    for rank in range(2):
        parts = split_model(meta_model(CFG), rank, 2, "1f1b")
        (s, part), = parts.items()
        materialize(part, "cpu", seed=5)
        assert not part.growing and float(part.grow_m) == 0.0
        for name, value in part.state_dict().items():
            assert torch.equal(value, want[name]), name
        assert set(part.blocks) == ({"0", "1"} if s == 0 else {"2", "3"})
