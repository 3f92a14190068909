"""One typed config for a run: model shape, data, optimizer, schedule, parallel layout, stages and growth.

TOML in (``load_config``), TOML out (``save_config``). Every bad value becomes one ``FlmError`` line that
names the key and the fix; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, model_validator

from flm.errors import FlmError
from flm.io import atomic_write

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

VOCAB_MULTIPLE = 128
# "selective" activation checkpointing recomputes every SELECTIVE_EVERY-th block (torchtitan's layer-selective
# mode): half the activation memory of the blocks for a third more forward compute on those blocks.
SELECTIVE_EVERY = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """Shape and parameterization of the FLM decoder (GPT-3 style pre-LN, xPos rotary, GeLU MLP)."""

    vocab_size: int = Field(8192, gt=0, description="tokenizer vocabulary; the model pads it to 128")
    d_model: int = Field(128, gt=0)
    n_layers: int = Field(4, gt=0)
    n_heads: int = Field(4, gt=0)
    head_dim: int | None = Field(None, gt=0, description="defaults to d_model // n_heads")
    d_ff: int | None = Field(None, gt=0, description="defaults to 4 * d_model")
    max_seq_len: int = Field(256, gt=0)
    rotary_theta: float = Field(10000.0, gt=0)
    xpos: bool = True
    xpos_scale_base: float = Field(512.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    ln_eps: float = Field(1e-5, gt=0)
    init_std: float = Field(0.02, gt=0)
    # muP: None = standard parameterization; otherwise the base width the hyperparameters were tuned at.
    mup_base_width: int | None = Field(None, gt=0)
    input_mult: float = Field(1.0, gt=0)
    output_mult: float = Field(1.0, gt=0)
    attn_scale: Literal["sqrt", "linear"] | None = Field(
        None, description="1/sqrt(d_head) or 1/d_head; default sqrt under SP, linear under muP"
    )
    # Imported models (flm/interop): GPT-NeoX's exact-erf GeLU, and FLM-101B's GPT-2 attention flags.
    activation: Literal["gelu_tanh", "gelu"] = Field("gelu_tanh", description="MLP GeLU: tanh approximation or erf")
    scale_attn_by_inverse_layer_idx: bool = Field(
        False, description="attention logits of layer i (from 0) further divided by i + 1 (FLM-101B, GPT-2)"
    )
    reorder_and_upcast_attn: bool = Field(
        False, description="attention in fp32 under bf16 training (FLM-101B, GPT-2); same function in fp32"
    )

    @model_validator(mode="after")
    def _fill_and_check(self) -> ModelConfig:
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"model.d_model ({self.d_model}) is not divisible by model.n_heads ({self.n_heads}): "
                    "pick d_model as a multiple of n_heads, or set model.head_dim"
                )
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.head_dim % 2:
            raise ValueError(
                f"model.head_dim is {self.head_dim}, odd: rotary embeddings need an even head_dim; "
                "change d_model/n_heads or set model.head_dim to an even number"
            )
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        if self.attn_scale is None:
            object.__setattr__(self, "attn_scale", "linear" if self.mup_base_width else "sqrt")
        return self

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    @property
    def attn_dim(self) -> int:
        return self.n_heads * self.head_dim  # type: ignore[operator]

    @property
    def width_mult(self) -> float:
        """d_model / base width under muP, 1.0 under standard parameterization."""
        return self.d_model / self.mup_base_width if self.mup_base_width else 1.0

    def num_params(self, embeddings: bool = True) -> int:
        """Exact parameter count of ``FLM`` (tied embeddings, biases, LayerNorms)."""
        d, a, f = self.d_model, self.attn_dim, self.d_ff
        attn = 3 * (d * a + a) + (a * d + d)
        mlp = d * f + f + f * d + d  # type: ignore[operator]
        block = attn + mlp + 2 * 2 * d
        total = self.n_layers * block + 2 * d
        if embeddings:
            total += self.padded_vocab_size * d
        return total

    def shape(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("d_model", "n_layers", "n_heads", "head_dim", "d_ff")}


class GrowthConfig(_Strict):
    """How one stage grows out of the previous one (MSG). Unset dimensions stay as they are, except
    n_heads: head_dim is fixed by growth, so when the attention width equals d_model and only d_model is
    given, the heads follow the width (n_heads = d_model / head_dim), as in FLM-101B."""

    d_model: int | None = Field(None, gt=0)
    d_ff: int | None = Field(None, gt=0)
    n_heads: int | None = Field(None, gt=0, description="new heads have the current head_dim")
    n_layers: int | None = Field(None, gt=0)
    ramp_steps: int = Field(100, ge=0, description="optimizer steps over which the masks go 0 -> 1")
    depth_position: Literal["top", "interleave"] | list[int] = Field(
        "top", description="new blocks: on top, spread between old ones, or at these indices of the new model"
    )
    depth_init: Literal["copy", "random"] = "copy"
    depth_copy_from: int | None = Field(
        None, ge=0, description="old layer every new block copies (default: the old block just below it)"
    )
    reset_optimizer: bool = False
    readout: Literal["keep", "mup"] = Field(
        "keep", description="μP width growth: keep the readout multiplier (function-preserving; output_mult "
        "scales with d_model) or move it to the new width's over the ramp ('mup': output_mult unchanged, as "
        "the released FLM-101B's 2.0)"
    )
    method: Literal["msg", "gstack", "hyperclone", "net2net"] = Field(
        "msg", description="msg: masked growth (the default); literature baselines (docs/growth.md#baselines), "
        "fresh optimizer, no masks: gstack stacks the old layers (depth, a multiple), hyperclone duplicates the "
        "width (integer factors), net2net replicates random units and adds identity blocks"
    )


class DataSource(_Strict):
    path: str | None = Field(None, description="file or glob: .txt, .jsonl, .jsonl.gz with a 'text' field")
    weight: float = Field(1.0, ge=0, description="share of the mixture (0: never drawn)")
    allow_undecodable: bool = Field(
        False, description="train on files that do not look like UTF-8 text (NUL bytes, replacement characters)"
    )
    kind: Literal["text", "teacher"] = Field("text", description="teacher: labelled items -> teacher signals")
    pack: Literal["stream", "whole"] | None = Field(
        None, description="stream: cut into windows across documents; whole: every document whole in one "
        "window (default: whole for teacher sources)"
    )
    # kind = "teacher" (flm.data.teacher; docs/unified-objective.md)
    tasks: list[str] | None = Field(None, description="teacher tasks (default: every olmo-eval recipe)")
    templates: str | None = Field(None, description="TOML/JSON file of tasks that extend or override the built-in")
    split: Literal["train", "heldout"] | None = Field(None, description="default: train for data.train")
    holdout: float = Field(0.2, gt=0, lt=1, description="share of each task's items held out for evaluation")
    negatives: int = Field(1, gt=0, description="false propositions per item (at most the other labels)")
    labels: tuple[str, str] = Field(
        ("label_pos", "label_neg"), description="true/false label tokens: registry names or one-token strings"
    )
    items: int = Field(5000, gt=0, description="items per procedural task")
    corpus: str = Field("data/pd-english/train.jsonl.gz", description="text the procedural tasks are made from")

    @model_validator(mode="after")
    def _check_kind(self) -> DataSource:
        if self.kind == "text" and self.path is None:
            raise ValueError('a data source needs a path (or kind = "teacher")')
        if self.kind == "text" and (self.tasks is not None or self.templates is not None):
            raise ValueError('tasks and templates belong to a teacher source: add kind = "teacher"')
        return self

    @property
    def packing(self) -> str:
        return self.pack or ("whole" if self.kind == "teacher" else "stream")


def weights_problem(weights: list[float], where: str) -> str | None:
    """Why a mixture cannot be drawn from (every weight zero), or None."""
    if weights and not any(w > 0 for w in weights):
        return f"{where}: every source has weight 0; give at least one source a positive weight"
    return None


class TokenizerConfig(_Strict):
    kind: Literal["bpe", "file", "tiktoken"] = "bpe"
    vocab_size: int = Field(8192, ge=300, description="for kind='bpe': size of the BPE trained on the corpus")
    path: str | None = Field(None, description="tokenizer.json (kind='file') or .tiktoken/vocab file")
    name: str | None = Field(None, description="tiktoken encoding: cl100k_base or gpt2")


class DataConfig(_Strict):
    train: list[DataSource] = Field(default_factory=lambda: [DataSource(path="data/pd-english/train.jsonl.gz")])
    valid: list[DataSource] = Field(default_factory=lambda: [DataSource(path="data/pd-english/valid.jsonl.gz")])
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    prepared_dir: str = Field("data/prepared", description="token shards are cached here by content hash")
    max_chars: int | None = Field(None, gt=0, description="use only the first N characters of each train source")
    workers: int = Field(2, gt=0)
    document_mask: bool = Field(
        False, description="attention never crosses a document boundary in a packed window; positions restart"
    )

    @model_validator(mode="after")
    def _check_mixture(self) -> DataConfig:
        for split in ("train", "valid"):
            problem = weights_problem([s.weight for s in getattr(self, split)], f"data.{split}")
            if problem:
                raise ValueError(problem)
        return self


class StageData(_Strict):
    """A stage's own mixture: ``train`` replaces the plan's training sources, ``weights`` reweights them."""

    train: list[DataSource] | None = None
    weights: list[float] | None = Field(None, description="one weight per source of data.train (or of train)")


class OptimConfig(_Strict):
    lr: float = Field(1e-3, gt=0, description="peak learning rate (stage-start LR under growth)")
    min_lr: float = Field(1e-4, ge=0, description="floor of the cosine schedule")
    warmup_steps: int = Field(100, ge=0)
    decay_steps: int | None = Field(
        None, gt=0, description="the cosine's horizon: steps, from the plan's first, at which it reaches min_lr "
        "(lr_mode inherit; default: the plan's length, or train.steps); longer than the plan, the run ends above "
        "min_lr, as FLM-101B's stage-start LRs imply (docs/growth.md#learning-rate)"
    )
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas, each in [0, 1)")
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    clip: float = Field(1.0, ge=0, description="gradient-norm clip; 0 disables")

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas = {list(self.betas)}: each beta must be in [0, 1), e.g. [0.9, 0.95]")
        if self.min_lr > self.lr:
            raise ValueError(f"optim.min_lr ({self.min_lr}) is above optim.lr ({self.lr}); the floor must be lower")
        if self.decay_steps is not None and self.decay_steps <= self.warmup_steps:
            raise ValueError(f"optim.decay_steps ({self.decay_steps}) ends the cosine before optim.warmup_steps "
                             f"({self.warmup_steps}) ends the warmup; set decay_steps above warmup_steps, or drop it")
        return self


class SpikeConfig(_Strict):
    """train.spike: what a loss spike or a non-finite loss / gradient norm does (docs/reliability.md)."""

    factor: float = Field(3.0, gt=1, description="a loss above factor x the running mean of recent losses is a spike")
    window: int = Field(50, gt=0, description="accepted steps the running mean covers")
    action: Literal["skip", "rollback"] = Field(
        "skip", description="skip: drop the update (weights, moments, step unchanged); rollback: reload the last "
        "checkpoint and read on after the bad batch (skip while there is none)")
    max_events: int = Field(10, ge=0, description="stop the run after this many spikes (skipped or rolled back)")


class TrainConfig(_Strict):
    steps: int = Field(200, gt=0, description="optimizer steps for one stage")
    batch_size: int = Field(16, gt=0, description="global batch, in sequences")
    micro_batch_size: int | None = Field(None, gt=0, description="per-rank micro batch; default = all")
    seq_len: int | None = Field(None, gt=0, description="defaults to model.max_seq_len")
    eval_every: int = Field(50, ge=0)
    eval_batches: int = Field(8, gt=0)
    log_every: int = Field(10, gt=0)
    ckpt_every: int = Field(0, ge=0, description="0 = only at the end")
    keep_last: int = Field(2, gt=0)
    checkpoint_format: Literal["full", "sharded"] = Field(
        "full", description="full: rank 0 gathers and writes whole tensors; sharded: every rank writes its own "
        "shards (torch.distributed.checkpoint), which resume under any other layout"
    )
    spike: SpikeConfig | None = Field(None, description="loss-spike / NaN guard; unset: a non-finite loss stops")
    async_checkpoint: bool = Field(
        False, description="sharded checkpoints only: write the shards in the background while training goes on"
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    peak_flops: float | None = Field(None, gt=0, description="per-device peak FLOP/s for MFU")
    compile: bool = Field(
        False, description="torch.compile each block (fuses the elementwise work; pays off on GPU, ~0 on CPU)"
    )
    progress: bool = True
    activation_checkpointing: Literal["none", "selective", "full"] = Field(
        "none",
        description="recompute block activations in the backward instead of keeping them: 'full' = every "
        "block, 'selective' = every second block (torchtitan's layer-selective mode); saves memory, costs "
        "one more forward of the recomputed blocks",
    )


    @model_validator(mode="after")
    def _check_async(self) -> TrainConfig:
        if self.async_checkpoint and self.checkpoint_format != "sharded":
            raise ValueError('train.async_checkpoint writes shards in the background: set train.checkpoint_format '
                             '= "sharded" too, or async_checkpoint = false')
        return self

class ParallelConfig(_Strict):
    dp: int = Field(-1, description="data-parallel (FSDP2) degree; -1 = all remaining ranks")
    tp: int = Field(1, gt=0, description="tensor-parallel degree; divides n_heads, d_ff and the padded vocabulary")
    pp: int = Field(1, gt=0, description="pipeline-parallel degree (stages); at most n_layers")
    sequence_parallel: bool = Field(
        False, description="under tp > 1, shard LayerNorm and dropout over the sequence (less activation memory)"
    )
    pp_schedule: Literal["gpipe", "1f1b", "interleaved_1f1b"] = Field(
        "1f1b", description="pipeline schedule under pp > 1"
    )
    microbatches: int | None = Field(
        None, gt=0, description="pipeline micro-batches per step, dividing the batch; default = pp"
    )
    timeout_s: int = Field(
        1800, gt=0, description="collective timeout, seconds; covers rank 0 writing the largest checkpoint"
    )

    @model_validator(mode="after")
    def _check_dp(self) -> ParallelConfig:
        if self.dp != -1 and self.dp < 1:
            raise ValueError(f"parallel.dp = {self.dp}: give a positive degree, or -1 for all remaining ranks")
        return self


class StageConfig(_Strict):
    """One stage of a progressive run. The first stage trains ``model``; later ones ``grow`` it."""

    name: str | None = None
    grow: GrowthConfig | None = None
    steps: int | None = Field(None, gt=0)
    tokens: int | None = Field(None, gt=0)
    lr: float | None = Field(
        None, gt=0, description="restart: the stage's peak LR; inherit: the plan's peak (first stage) or the "
        "stage's start LR (later stages: the shared cosine is scaled from here on to start at it)"
    )
    lr_scale: float | None = Field(
        None, gt=0, description="lr_mode inherit, later stages: multiplies the inherited LR from this stage on"
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="restart: the stage's warmup; inherit: later stages move from the inherited LR to "
        "their lr (or lr_scale) over these steps"
    )
    batch_size: int | None = Field(None, gt=0)
    data: StageData | None = Field(None, description="this stage's training mixture (e.g. teacher signals late)")
    parallel: ParallelConfig | None = None
    tflops_per_gpu: float | None = Field(
        None, gt=0, description="measured TFLOP/s per GPU, for flm cost (counts recomputed forwards "
        "when cost.recompute or cost.recompute_layers says training recomputes activations)"
    )

    @model_validator(mode="after")
    def _steps_or_tokens(self) -> StageConfig:
        if self.steps is not None and self.tokens is not None:
            raise ValueError("a stage sets either steps or tokens, not both")
        return self


class ReportedCost(_Strict):
    """Published figures of the plan's run (a paper's table), printed by `flm cost` beside its estimate and
    never used as it."""

    source: str = Field(description="where the figures come from, shown with them, e.g. 'paper (Table 2)'")
    tflops_per_gpu: list[PositiveFloat] | None = Field(None, description="per stage, the reported TFLOP/s per GPU")
    days: list[PositiveFloat] | None = Field(None, description="per stage, the reported training days")


class CostConfig(_Strict):
    """Hardware and prices for `flm cost` (see flm/scaling/cost.py)."""

    gpu: str = Field("A800", description="A100, A800, H100, H800, H200 (bf16 dense peak known) or cpu")
    n_gpus: int = Field(1, gt=0, description="GPUs of a stage whose parallel layout leaves dp = -1")
    peak_tflops: float | None = Field(
        None, gt=0, description="peak TFLOP/s per GPU; overrides the known one (cpu: measured if unset)"
    )
    mfu: float | None = Field(None, gt=0, le=1, description="used when a stage gives no tflops_per_gpu")
    price_per_gpu_hour: float = Field(1.0, description="US dollars")
    tdp_watts: float | None = Field(None, gt=0, description="overrides the known TDP of `gpu`")
    pue: float = Field(1.0, ge=1, description="datacenter power usage effectiveness (FLM-101B Table 3: 1)")
    carbon_kg_per_kwh: float = Field(
        0.65, ge=0, description="grid intensity, kg CO2e per kWh; 0.65 is what FLM-101B Table 3 implies"
    )
    recompute: bool = Field(
        False, description="training recomputes all activations (tflops_per_gpu counts the extra forward)"
    )
    recompute_layers: list[int] | None = Field(
        None, description="per stage, how many blocks recompute their activations; overrides `recompute`"
    )
    formula: Literal["narayanan", "6n"] = Field(
        "narayanan", description="FLOPs per token: Narayanan et al. 2021 (the paper's) or 6N + attention"
    )
    network: str | None = Field(None, description="inter-node network (flm/hardware.toml); default: the GPU's")
    dp_mode: Literal["fsdp", "zero1", "ddp"] = Field(
        "fsdp", description="data parallelism the performance model assumes: flm's FSDP2, ZeRO-1 "
        "(Megatron's distributed optimizer) or DDP"
    )
    reported: ReportedCost | None = Field(
        None, description="published figures shown beside the estimate (cost.reported.source names them)"
    )

    @model_validator(mode="after")
    def _check_price(self) -> CostConfig:
        if self.price_per_gpu_hour < 0:
            raise ValueError(
                f"price_per_gpu_hour is {self.price_per_gpu_hour}: a price cannot be negative; give "
                "US dollars per GPU-hour, e.g. 1.0 (0 to leave dollars out)"
            )
        if self.recompute_layers is not None and any(n < 0 for n in self.recompute_layers):
            raise ValueError("recompute_layers holds a negative count; give 0..n_layers per stage")
        return self


class RunConfig(_Strict):
    name: str = "run"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    stages: list[StageConfig] = Field(default_factory=list)
    lr_mode: Literal["inherit", "restart"] = Field(
        "inherit", description="inherit: one cosine across stages (the paper); restart: new warmup per stage"
    )
    cost: CostConfig = Field(default_factory=CostConfig)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        seq = self.seq_len
        if seq > self.model.max_seq_len:
            raise ValueError(
                f"train.seq_len ({seq}) exceeds model.max_seq_len ({self.model.max_seq_len}); lower it"
            )
        if self.stages:
            if self.stages[0].grow is not None:
                raise ValueError("stages[0] must not have a grow section: the first stage trains [model]")
            for i, st in enumerate(self.stages[1:], start=1):
                if st.grow is None:
                    raise ValueError(f"stages[{i}] needs a [stages.grow] section saying how it grows")
        return self

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.max_seq_len


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    cls: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part) if hasattr(cls, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        for cand in getattr(ann, "__args__", (ann,)):
            cand = getattr(cand, "__args__", (cand,))[0] if getattr(cand, "__origin__", None) is list else cand
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                cls = cand
                break
        else:
            return []
    return list(cls.model_fields)


def _origin(loc: tuple[Any, ...], where: str, overrides: list[str]) -> str:
    """Where the value at ``loc`` came from: the last ``--set`` that set it (or a table holding it), else
    ``where`` (the file)."""
    path = [str(part) for part in loc]
    for text in reversed(overrides):
        keys = parse_override(text)[0]
        if path[: len(keys)] == keys:
            return f"--set {text}"
    return where


def _validated(model: type[BaseModel], data: dict[str, Any], where: str, overrides: list[str] = ()) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = _origin(err["loc"], where, overrides)
        loc = _loc(err["loc"])
        if err["type"] == "extra_forbidden":
            known = _known_keys(model, err["loc"])
            close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
            raise FlmError(f"{where}: unknown key '{loc}': {hint}") from None
        msg = err["msg"].removeprefix("Value error, ")
        if loc:
            got = err.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict) and got is not None else ""
            raise FlmError(f"{where}: {loc}: {msg}{shown}") from None
        raise FlmError(f"{where}: {msg}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.steps=10' -> (['train', 'steps'], 10); the value is parsed as TOML when it can be."""
    if "=" not in text:
        raise FlmError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.steps=100")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    keys: list[str] = []
    for part in key.strip().split("."):  # stages[1].lr and stages.1.lr both index the list
        name, *idx = part.replace("]", "").split("[")
        keys += ([name] if name else []) + idx
    return keys, value


def _set(data: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    node: Any = data
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise FlmError(f"--set {text}: '{k}' is not an index of a list of {len(node)} (0-based)")
            if last:
                node[int(k)] = value
            else:
                node = node[int(k)]
        elif isinstance(node, dict):
            if last:
                node[k] = value
            else:
                node = node.setdefault(k, {})
        else:
            raise FlmError(f"--set {text}: '{keys[i - 1]}' is not a table")


def model_config_from_dict(data: dict[str, Any], where: str) -> ModelConfig:
    """A [model] section from another source (e.g. an imported config.json); one line naming ``where`` and the
    key when a value is out of range."""
    return _validated(ModelConfig, data, where)


def config_from_dict(data: dict[str, Any], where: str = "config", overrides: list[str] = ()) -> RunConfig:
    for text in overrides:
        keys, value = parse_override(text)
        _set(data, keys, value, text)
    return _validated(RunConfig, data, where, overrides)


def check_warmup(key: str, warmup: int, steps: int, span: str, why: str = "", other_fix: str = "") -> None:
    """Refuse a warmup longer than the steps it covers (``span``): the LR would never reach its peak."""
    if warmup > steps:
        raise FlmError(
            f"{key} ({warmup}) is longer than {span} ({steps} steps{why}): the learning rate would never reach "
            f"its peak; lower {key} to at most {steps}{other_fix}"
        )


BUNDLED_TRAIN = "data/pd-english/train.jsonl.gz"


def check_training_source(cfg: RunConfig, where: str) -> None:
    """Training needs the config to name its corpus (``data.train``): without it the library default, the
    bundled English corpus, would train a plan meant for other data (FLM-101B's) without a word."""
    if "data" in cfg.model_fields_set and "train" in cfg.data.model_fields_set:
        return
    raise FlmError(
        f"{where}: names no training data (data.train is unset); give [data] train = [{{ path = \"...\" }}] "
        f"(e.g. the bundled corpus, {BUNDLED_TRAIN}) or --set 'data.train=[{{path=\"...\"}}]'"
    )


def load_config(path: str | os.PathLike[str], overrides: list[str] = ()) -> RunConfig:
    p = Path(path)
    if not p.is_file():
        raise FlmError(f"config file not found: {p} (pass a TOML file, e.g. configs/demo.toml)")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise FlmError(f"{p}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise FlmError(f"{p}: not UTF-8 text (byte {e.start}); a config is a UTF-8 TOML file") from None
    cfg = config_from_dict(data, where=str(p), overrides=overrides)
    if not cfg.stages:  # `flm train`'s schedule; flm.stages checks a plan's (not here: stage checkpoints)
        check_warmup("optim.warmup_steps", cfg.optim.warmup_steps, cfg.train.steps, "train.steps")
    return cfg


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude_none=True)


def dump_toml(cfg: BaseModel) -> str:
    return tomli_w.dumps(config_to_dict(cfg))


def save_config(cfg: BaseModel, path: str | os.PathLike[str]) -> None:
    atomic_write(path, dump_toml(cfg))
