"""The catalogue of user mistakes (docs/mistakes.md): every case runs one `flm` command the way a user would get
it wrong and must end with exit code 2, exactly one line on stderr (no traceback) holding the expected words, and
the folder exactly as it was: nothing written, nothing lost.

Every case runs in its own copy of one small world (a corpus, its prepared data, a two-step run with two
checkpoints, a checkpoint grown mid-ramp), from inside that copy, so the paths in the messages are the relative
ones a user types. A run folder's ``.lock`` records its last holder and is not compared.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import random
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import tomli_w

from flm.cli import main
from tests.conftest import REPO, tiny_config_dict

DOCS = REPO / "docs" / "mistakes.md"
RUN = "runs/tiny"  # trained 2 steps, a checkpoint after each
CKPT, EARLIER = f"{RUN}/checkpoints/step_00000002", f"{RUN}/checkpoints/step_00000001"
GROWN = "runs/grown"  # runs/tiny grown, in the middle of its growth ramp
LOCK_FILE = ".lock"


def _write(path: str, text: str | bytes) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode() if isinstance(text, str) else text)

    return setup


def _flip(path: str, pos: int = -3) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        raw = bytearray((root / path).read_bytes())
        raw[pos] ^= 0x10
        (root / path).write_bytes(bytes(raw))

    return setup


def _cut(path: str, keep: int) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / path).write_bytes((root / path).read_bytes()[:keep])

    return setup


def _delete(path: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / path).unlink()

    return setup


def _source(path: str, text: str | bytes) -> Callable[[Path], None]:
    """The config's training source replaced by ``path`` holding ``text`` (written as ``src.toml``)."""
    def setup(root: Path) -> None:
        _write(path, text)(root)
        (root / "src.toml").write_text((root / "tiny.toml").read_text().replace("corpus/train.jsonl", path))

    return setup


def _plan_folder(root: Path) -> None:
    """runs/tiny turned into the record of an `flm run` (its config has [[stages]])."""
    cfg = (root / RUN / "config.toml").read_text()
    plan = "stages = [{steps = 2}, {steps = 2, grow = {d_ff = 256}}]"
    (root / RUN / "config.toml").write_text(cfg.replace("stages = []", plan, 1))


def _locked(root: Path) -> IO[str]:
    """Another process holds runs/tiny: its advisory lock taken on a file description of our own."""
    f = (root / RUN / LOCK_FILE).open("a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.truncate(0)
    f.write(json.dumps({"pid": 4242, "host": "node7"}))
    f.flush()
    return f


def _random_bytes(n: int) -> bytes:
    return random.Random(0).randbytes(n)


LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "num_attention_heads": 2}
NEOX = {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "hidden_size": 32, "num_attention_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 512, "max_position_embeddings": 32,
        "rotary_pct": 1.0, "use_parallel_residual": False, "tie_word_embeddings": True}
STAGES = "stages=[{steps=2},{steps=2,grow={d_ff=256,ramp_steps=1}%s}]"
TEMPLATE = '[tasks.x]\nkind = "yes_no"\ndata = "procedural:parity"\ntemplates = ["%s"]\n'


@dataclass(frozen=True)
class Mistake:
    id: str
    argv: str  # after `flm`, run from the world's copy
    expect: str  # words the error line holds
    setup: Callable[[Path], object] | None = None  # what it returns is closed after the command
    env: tuple[tuple[str, str | None], ...] = ()  # environment variables set (None: unset) for the command


CASES = [
    # configs
    Mistake("config-missing", "train nope.toml", "config file not found: nope.toml"),
    Mistake("config-not-toml", "train bad.toml", "bad.toml: not valid TOML", _write("bad.toml", "[model\nd_model = 3")),
    Mistake("config-not-utf8", "cost bin.toml", "not UTF-8", _write("bin.toml", b"\xff\xfe[model]\n")),
    Mistake("config-unknown-key", "train tiny.toml --set model.d_modl=64", "did you mean 'd_model'?"),
    Mistake("config-set-without-value", "train tiny.toml --set steps", "expected KEY=VALUE"),
    Mistake("config-out-of-range", "train tiny.toml --set optim.lr=-1", "optim.lr: Input should be greater than 0"),
    Mistake("config-warmup-too-long", "train tiny.toml --set optim.warmup_steps=50",
            "the learning rate would never reach its peak"),
    Mistake("config-bf16-on-cpu", "train tiny.toml --out new --set train.dtype=bf16", "this CPU has no bf16 units"),
    Mistake("config-no-train-data", "run nodata.toml", "nodata.toml: names no training data (data.train is unset)",
            _write("nodata.toml", 'name = "mine"\n')),
    Mistake("config-micro-batch", "train tiny.toml --out new --set train.batch_size=3 --set train.micro_batch_size=2",
            "train.micro_batch_size (2) must divide the per-rank batch (3)"),
    # flm train: run folders and checkpoints to start from
    Mistake("train-out-holds-a-run", f"train tiny.toml --out {RUN}", "already holds a run (config.toml exists)"),
    Mistake("train-resume-nothing", "train tiny.toml --out new --resume", "holds no run to resume"),
    Mistake("train-resume-other-model", f"train tiny.toml --out {RUN} --resume --set model.d_model=64",
            "resume with the run's own config"),
    Mistake("train-into-a-plan-folder", f"train tiny.toml --out {RUN}", "holds a progressive run (flm run, 2 stages)",
            _plan_folder),
    Mistake("train-folder-in-use", f"train tiny.toml --out {RUN} --resume",
            "is in use by another flm process (PID 4242 on host node7)", _locked),
    Mistake("train-init-other-shape", f"train tiny.toml --out new --init {CKPT} --set model.d_model=64",
            "set [model] to the checkpoint's shape"),
    # data
    Mistake("data-path-missing", "data prepare tiny.toml --set data.train.0.path=corpus/trian.jsonl",
            "data.train[0].path: file not found: corpus/trian.jsonl"),
    Mistake("data-glob-matches-nothing", "data prepare tiny.toml --set 'data.train.0.path=texts/*.jsonl'",
            "matches no files"),
    Mistake("data-utf16", "data prepare src.toml", "does not look like UTF-8 text (50% NUL bytes: UTF-16 or binary)",
            _source("corpus/u16.txt", ("Some text, in UTF-16. " * 300).encode("utf-16"))),
    Mistake("data-unsupported-file", "data prepare src.toml", "unsupported file type",
            _source("corpus/dump.bin", _random_bytes(4000))),
    Mistake("data-bad-jsonl", "data prepare src.toml", "corpus/bad.jsonl:2: not valid JSON",
            _source("corpus/bad.jsonl", '{"text": "fine"}\n{"text": cut off\n')),
    Mistake("data-empty-corpus", "data prepare src.toml --set data.prepared_dir=prepared-new", "the corpus is empty",
            _source("corpus/empty.jsonl", "")),
    Mistake("data-vocab-too-small", "data prepare tiny.toml --set model.vocab_size=100",
            "the tokenizer has 512 tokens but model.vocab_size is 100"),
    Mistake("data-tokenizer-file-unset", "data prepare tiny.toml --set data.tokenizer.kind=file",
            "needs data.tokenizer.path"),
    Mistake("data-stats-not-prepared", "data stats corpus", "holds no prepared data (index.json missing)"),
    Mistake("data-teacher-unknown-task", "data teacher --tasks sst3", "unknown task 'sst3'"),
    Mistake("data-teacher-template-without-answer", "data teacher --templates t.toml", "has no {answer} field",
            _write("t.toml", TEMPLATE % "the parity is even")),
    # checkpoints
    Mistake("ckpt-not-found", "checkpoint verify runs/tiny/checkpoints/step_00000003", "checkpoint not found"),
    Mistake("ckpt-flipped-byte", f"checkpoint verify {CKPT}", "optim.safetensors fails its sha256 check",
            _flip(f"{CKPT}/optim.safetensors", 200)),
    Mistake("ckpt-truncated", f"generate {CKPT} --prompt Once", "model.safetensors is 500 bytes",
            _cut(f"{CKPT}/model.safetensors", 500)),
    Mistake("ckpt-file-missing", f"eval ppl {RUN} --data corpus/valid.jsonl", "trainer.json is missing (incomplete)",
            _delete(f"{CKPT}/trainer.json")),
    Mistake("ckpt-no-manifest", f"generate {CKPT} --prompt Once", "not a complete checkpoint (no manifest.json)",
            _delete(f"{CKPT}/manifest.json")),
    Mistake("ckpt-resume-damaged", f"train tiny.toml --out {RUN} --resume --set train.steps=4",
            f"the previous one is {EARLIER}", _flip(f"{CKPT}/model.safetensors")),
    Mistake("ckpt-consolidate-full", f"checkpoint consolidate {CKPT} full", "is a full checkpoint already"),
    # flm grow: growth specs
    Mistake("grow-shrink", f"grow {CKPT} --to d_model=16 --out big", "growth cannot shrink a dimension"),
    Mistake("grow-unknown-key", f"grow {CKPT} --to d_modle=64 --out big", "unknown key 'd_modle'"),
    Mistake("grow-not-key-value", f"grow {CKPT} --to 64 --out big", "'64' is not KEY=VALUE"),
    Mistake("grow-spec-file-not-toml", f"grow {CKPT} --to spec.toml --out big", "spec.toml: not valid TOML",
            _write("spec.toml", "[grow\nd_model = 64\n")),
    Mistake("grow-width-off-head-dim", f"grow {CKPT} --to d_model=40 --out big", "not a multiple of head_dim 16"),
    Mistake("grow-depth-position", f"grow {CKPT} --to n_layers=3,depth_position=[5] --out big",
            "need 1 distinct block indices in [0, 3)"),
    Mistake("grow-key-twice", f"grow {CKPT} --to d_model=64,d_ff=256,d_model=128 --out big",
            "d_model is given twice"),
    Mistake("grow-out-exists", f"grow {CKPT} --to d_model=64 --out {RUN}", "growth never overwrites"),
    Mistake("grow-mid-ramp", f"grow {GROWN} --to d_model=64 --out big", "in the middle of a growth ramp"),
    # flm run: growth plans
    Mistake("run-ramp-longer-than-stage",
            "run tiny.toml --out plan --set 'stages=[{steps=2},{steps=2,grow={d_ff=256}}]'",
            "stages[1].grow.ramp_steps (100) is longer than the stage (2 steps)"),
    Mistake("run-stage-without-length", "run tiny.toml --out plan --set 'stages=[{steps=2},{grow={d_ff=256}}]'",
            "stages[1] sets neither steps nor tokens"),
    Mistake("run-stage-weights", f"run tiny.toml --out plan --set '{STAGES % ',data={weights=[1,2]}'}'",
            "stages[1].data.weights lists 2 weights for 1 training sources"),
    Mistake("run-resume-a-train-folder", f"run tiny.toml --out {RUN} --resume",
            "holds a single-stage run (flm train)"),
    # distributed launch (checked before any process group starts)
    Mistake("dist-dp-not-world", "train tiny.toml --out new --set parallel.dp=2", "but 1 processes were started"),
    Mistake("dist-tp-not-dividing-world", "train tiny.toml --out new --set parallel.tp=2",
            "pp·tp = 1·2 = 2 does not divide the 1 processes started"),
    Mistake("dist-resume-other-layout", f"train tiny.toml --out {RUN} --resume --set parallel.tp=2",
            "does not divide the 1 processes started"),
    Mistake("dist-world-size-without-torchrun", "train tiny.toml --out new", "MASTER_ADDR, MASTER_PORT not set",
            env=(("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", None), ("MASTER_PORT", None))),
    Mistake("dist-stage-layout", f"run tiny.toml --out plan --set '{STAGES % ',parallel={pp=4}'}'",
            "stages[1].parallel: pp·tp = 4·1 = 4 does not divide the 1 processes started"),
    Mistake("dist-tp-not-dividing-heads", "cost tiny.toml --memory --n-gpus 4 --set parallel.tp=4",
            "parallel.tp = 4 does not divide model.n_heads = 2"),
    Mistake("dist-pp-above-layers", "cost tiny.toml --memory --n-gpus 8 --set parallel.pp=4",
            "every stage needs at least one block; set parallel.pp <= 2"),
    Mistake("dist-gpus-not-multiple", "cost tiny.toml --memory --n-gpus 6 --set parallel.tp=2 --set parallel.pp=2",
            "is not a multiple of tp·pp = 4"),
    Mistake("dist-microbatches", "cost tiny.toml --memory --n-gpus 2 --set parallel.pp=2 --set parallel.microbatches=3",
            "parallel.microbatches = 3 does not divide the batch of 4 sequences"),
    # flm cost
    Mistake("cost-unknown-gpu", "cost tiny.toml --gpu B300", "cost.gpu = 'B300' has no known peak"),
    Mistake("cost-negative-price", "cost tiny.toml --price -1", "a price cannot be negative"),
    Mistake("cost-mfu-above-one", "cost tiny.toml --mfu 1.5", "cost.mfu: Input should be less than or equal to 1"),
    # flm plan layout
    Mistake("layout-unknown-gpu", "plan layout tiny.toml --gpu H10", "did you mean H100?"),
    Mistake("layout-network-field", "plan layout tiny.toml --gpu A100 --hardware hw.toml",
            "networks.slow has no latency_us", setup=_write("hw.toml", "[networks.slow]\ngbps_per_gpu = 5.0\n")),
    Mistake("layout-not-dividing", "plan layout tiny.toml --gpu A100 --gpus 8 --set parallel.tp=4",
            "parallel.tp = 4 does not divide model.n_heads = 2"),
    Mistake("layout-partial-nodes", "plan layout tiny.toml --gpu A100 --gpus 12", "is not a multiple of the 8 GPUs"),
    # flm plan grow (issue 24) -- begin
    Mistake("grow-plan-budget-below-a-step", "plan grow tiny.toml --budget 1e3 --final d_model=64",
            "is below one step of the start shape"),
    Mistake("grow-plan-unreachable-final", "plan grow tiny.toml --budget 1e12 --final d_model=40",
            "--final.d_model = 40 is not a multiple of head_dim 16"),
    Mistake("grow-plan-fit-missing", "plan grow tiny.toml --budget 1e12 --final d_model=64 --fit fit.jsn",
            "--fit fit.jsn: no such file"),
    Mistake("grow-plan-fit-invalid", "plan grow tiny.toml --budget 1e12 --final d_model=64 --fit fit.json",
            "missing or non-numeric parameter 'A'", _write("fit.json", '{"format": "flm loss model v1", "E": 2}')),
    Mistake("grow-plan-no-growth", "plan grow tiny.toml --budget 1e12", "tiny.toml has no growth (one shape)"),
    # flm plan grow (issue 24) -- end
    # flm eval
    Mistake("eval-data-missing", f"eval ppl {RUN} --data corpus/test.jsonl", "--data corpus/test.jsonl: no such file"),
    Mistake("eval-model-missing", "eval ppl runs/tiy --data corpus/valid.jsonl", "model not found: runs/tiy"),
    Mistake("eval-text-field", f"eval ppl {RUN} --data corpus/valid.jsonl --text-field body", "no string field 'body'"),
    Mistake("eval-overlap", f"eval ppl {RUN} --data corpus/valid.jsonl --overlap 32",
            "--overlap 32 must be in [0, 31]"),
    Mistake("eval-bench-unknown-task", f"eval bench {RUN} --tasks arc_easyy", "unknown benchmark task 'arc_easyy'"),
    Mistake("eval-iq-unknown-task", f"eval iq {RUN} --tasks counting2", "unknown IQ task 'counting2'"),
    Mistake("eval-teacher-labels", f"eval teacher {RUN} --labels yes yes", "'yes' is not a token of this tokenizer"),
    # flm generate
    Mistake("generate-empty-prompt", f"generate {RUN} --prompt ''", "the prompt is empty"),
    Mistake("generate-negative", f"generate {RUN} --prompt Once --temperature -1", "must be >= 0"),
    # flm export / import
    Mistake("export-out-exists", f"export hf {CKPT} {RUN}", "already exists; nothing is overwritten"),
    Mistake("export-gguf-xpos", f"export gguf {CKPT} tiny.gguf", "cannot hold this model: xpos = true"),
    Mistake("export-mid-ramp", f"export hf {GROWN} hf", "in the middle of a growth ramp"),
    Mistake("import-not-a-model", f"import hf {RUN} imported", "is not a transformers model folder (no config.json)"),
    Mistake("import-unsupported-architecture", "import hf llama imported",
            "unsupported architecture model_type='llama'", _write("llama/config.json", json.dumps(LLAMA))),
    Mistake("import-no-weights", "import hf neox imported", "holds no weights",
            _write("neox/config.json", json.dumps(NEOX))),
    # μP and scaling
    Mistake("mup-coord-check-without-mup", "mup coord-check tiny.toml --widths 32,64", "needs model.mup_base_width"),
    Mistake("mup-search-width", "mup search tiny.toml --set model.mup_base_width=32 --width 40",
            "width 40 is not a multiple of model.head_dim (16)"),
    Mistake("predict-without-mup", "predict tiny.toml --widths 32,64,96", "loss prediction needs μP"),
    Mistake("predict-two-widths", "predict tiny.toml --set model.mup_base_width=32 --widths 32,64",
            "needs at least 3 widths, got 2"),
    Mistake("predict-not-a-run", "predict --runs corpus", "--runs corpus: not a run folder"),
    Mistake("predict-zero-seeds", "predict tiny.toml --set model.mup_base_width=32 --widths 32,48,64 --seeds 0",
            "--seeds 0: train each fitted width at 1 or more seeds"),
    Mistake("predict-seeds-with-runs", "predict --runs runs/tiny --seeds 2",
            "--seeds trains each fitted width at several seeds; with --runs give one folder per width"),
    Mistake("plot-not-a-run", "plot corpus", "no metrics.jsonl with data"),
]

# ---- issue 25 (b): evaluating flm's own exports, per-stage layouts in one process ----
REMOTE_CODE = {"model_type": "flm", "architectures": ["FLMForCausalLM"],
               "auto_map": {"AutoModelForCausalLM": "modeling_flm.FLMForCausalLM"}}
CASES += [
    Mistake("eval-remote-code-without-flag", "eval ppl xpos-hf --data corpus/valid.jsonl",
            "then pass --trust-remote-code to run it", _write("xpos-hf/config.json", json.dumps(REMOTE_CODE))),
    Mistake("eval-gguf-unreadable", "eval ppl cut.gguf --data corpus/valid.jsonl", "not a readable GGUF file",
            _write("cut.gguf", b"GGUF\x03\x00\x00\x00cut short")),
    Mistake("run-stage-layouts-in-one-process",
            "run tiny.toml --out plan --set 'stages=[{steps=2,parallel={dp=2}},"
            "{steps=2,grow={d_ff=256,ramp_steps=1}}]'",
            "or run every stage in this one process: --layout single"),
]


# ---- issue 25 (a): --init and tokenizers, corpora, imports and exports (kept apart to ease merging) ----------


def _exported(out: str, drop: tuple[str, ...] = (), **edit: object) -> Callable[[Path], None]:
    """runs/tiny exported to ``out`` (a transformers folder), its config.json then edited by hand."""
    def setup(root: Path) -> None:
        assert main(["export", "hf", CKPT, out]) == 0
        cfg = json.loads((root / out / "config.json").read_text()) | edit
        (root / out / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k not in drop}))

    return setup


def _neox_without_head(root: Path) -> None:
    """A GPT-NeoX folder that says its head is untied but holds no head tensor."""
    from safetensors.torch import save_file
    from torch import zeros

    (root / "untied").mkdir()
    (root / "untied" / "config.json").write_text(json.dumps(NEOX | {"tie_word_embeddings": False}))
    save_file({"gpt_neox.embed_in.weight": zeros(512, 32)}, str(root / "untied" / "model.safetensors"))
    shutil.copy(root / CKPT / "tokenizer.json", root / "untied" / "tokenizer.json")


LATIN1 = ("Le café était très animé; la fenêtre donnait sur la forêt. " * 200).encode("latin-1")
CASES += [
    Mistake("train-init-other-tokenizer",
            f"train tiny.toml --out new --init {CKPT} --set data.tokenizer.vocab_size=400",
            "the checkpoint was trained with its own tokenizer (hf tokenizer, 512 tokens), the config asks for"),
    Mistake("train-init-hf-folder", "train tiny.toml --out new --init neox",
            "convert it first with `flm import hf neox OUT`", _write("neox/config.json", json.dumps(NEOX))),
    Mistake("export-hf-folder", "export gguf neox out.gguf",
            "is a transformers model folder (config.json), not an flm", _write("neox/config.json", json.dumps(NEOX))),
    Mistake("export-gguf-suffix", f"export gguf {CKPT} out.txt", "a GGUF file's name ends in .gguf; give out.gguf"),
    Mistake("data-latin1", "data prepare src.toml",
            "Latin-1 or another 8-bit encoding); convert it (e.g. iconv -f LATIN1", _source("corpus/fr.txt", LATIN1)),
    Mistake("data-gz-not-gzip", "data prepare src.toml", "corpus/plain.jsonl.gz ends in .gz but is not gzip-compressed",
            _source("corpus/plain.jsonl.gz", '{"text": "plain text"}\n' * 50)),
    Mistake("data-whitespace-corpus", "data prepare src.toml --set data.prepared_dir=prepared-new",
            "only whitespace (", _source("corpus/blank.txt", " \n\t\n" * 200)),
    Mistake("import-edited-config", "import hf hfx imported",
            "hfx/config.json, as flm's [model]: model.d_model (32) is not divisible by model.n_heads (3)",
            _exported("hfx", n_head=3)),
    Mistake("import-config-not-the-weights", "import hf hfx imported", "(config.json and weights): tensor",
            _exported("hfx", drop=("flm",), n_inner=64)),
    Mistake("import-untied-without-head", "import hf untied imported", "the weights hold no output head",
            _neox_without_head),
]


@pytest.fixture(scope="module")
def world(tiny_corpus: Path, tmp_path_factory) -> Path:
    """tiny.toml, corpus/, prepared/, runs/tiny (2 steps, a checkpoint at each) and runs/grown (mid-ramp)."""
    root = tmp_path_factory.mktemp("mistakes")
    shutil.copytree(tiny_corpus, root / "corpus")
    cfg = tiny_config_dict(Path("corpus"), Path("prepared"), steps=2, eval_every=0, ckpt_every=1, keep_last=2)
    cfg["optim"]["warmup_steps"] = 1
    (root / "tiny.toml").write_text(tomli_w.dumps(cfg))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(["train", "tiny.toml", "--out", RUN]) == 0
        assert main(["grow", RUN, "--to", "d_ff=256,ramp_steps=5", "--out", GROWN, "--no-progress"]) == 0
    return root


def _snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root`` (but run-folder locks): a file's size, mtime and sha256; "folder" for a folder."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if p.name != LOCK_FILE:
            stat = p.stat()
            out[p.relative_to(root).as_posix()] = (
                (stat.st_size, stat.st_mtime_ns, hashlib.sha256(p.read_bytes()).digest()) if p.is_file() else "folder"
            )
    return out


def run_mistake(case: Mistake, world: Path, root: Path, capsys) -> tuple[int, str, dict, dict]:
    """Run ``case`` in a fresh copy of ``world`` at ``root``: (exit code, stderr, files before, files after)."""
    shutil.copytree(world, root, dirs_exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for key, value in case.env:
            if value is None:
                mp.delenv(key, raising=False)
            else:
                mp.setenv(key, value)
        held = case.setup(root) if case.setup else None
        before = _snapshot(root)
        capsys.readouterr()
        try:
            code = main(shlex.split(case.argv))
        finally:
            if held is not None:
                held.close()
        err = capsys.readouterr().err
    return code, err, before, _snapshot(root)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_mistake_is_one_line_exit_2_and_changes_nothing(case: Mistake, world: Path, tmp_path: Path, capsys):
    code, err, before, after = run_mistake(case, world, tmp_path / "w", capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("flm ") and ": error: " in lines[0], err
    assert case.expect in lines[0]
    assert after == before, sorted(set(after.items()) ^ set(before.items()))


def _docs_rows() -> dict[str, str]:
    rows = {}
    for line in DOCS.read_text().splitlines():
        m = re.match(r"\|\s*`([a-z0-9-]+)`\s*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = m.group(2).replace("\\|", "|")
    return rows


def test_the_docs_page_lists_every_case_with_its_message():
    rows, ids = _docs_rows(), [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 30
    assert sorted(rows) == sorted(ids)
    for case in CASES:
        assert case.expect in rows[case.id], case.id


def test_every_command_has_a_mistake():
    commands = {shlex.split(c.argv)[0] for c in CASES}
    assert commands >= {"train", "run", "grow", "data", "eval", "cost", "checkpoint", "generate", "export", "import",
                        "mup", "predict", "plot"}
