"""Corpus -> token shards: ``prepare_data(data_cfg)`` reads text sources, builds (or trains) the tokenizer,
tokenizes in worker processes and writes flat token files that the loader memory-maps.

Layout of ``<prepared_dir>/<hash>/`` (the hash covers the source files' contents, the weights, the tokenizer
config and max_chars, so an unchanged config reuses the folder and a changed one never sees stale tokens)::

    index.json          shards, token/document/character counts per source, dtype, weights, hash
    tokenizer/          Tokenizer.save()
    train_000.bin ...   token ids (uint16 when the vocabulary fits, else uint32), documents ended by EOS
    train_000.mask      only where some token is unsupervised: one uint8 per token (1 = take the loss)

Every shard holds tokens of one source, so the loader can mix sources by weight. The folder is built under
a temporary name and renamed when complete: a crash or Ctrl-C never leaves a half-written cache behind.

Input: .txt/.md (one document per file), .jsonl (one document per line, ``{"text": ...}``, or
``{"prompt": ..., "completion": ...}`` which is supervised only on the completion and its EOS: the shape of
instruction data and of the unified objective's teacher-signal samples; add ``"eos_loss": false`` to take the
loss on the completion alone, e.g. on one label token). Special-token strings such as "<|label_pos|>" are
read as those tokens inside prompt/completion, and as plain text in "text". Any file may be gzipped (.gz).
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from flm.config import DataConfig, DataSource, ModelConfig
from flm.data.instruct import chat_segments
from flm.data.jsonl import json_lines
from flm.data.teacher import TeacherSource, resolve_labels
from flm.data.tokenizer import Tokenizer, build_tokenizer, load_tokenizer, vocab_error
from flm.errors import FlmError
from flm.io import atomic_write, raise_if_disk_full, sha256_file
from flm.progress import Bar, progress_bar

FORMAT = 1
SPLITS = ("train", "valid")
SHARD_TOKENS = 1 << 28  # tokens per shard file (512 MiB at uint16)
CHUNK_CHARS = 1 << 20  # characters per work item sent to a worker
TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TOKENIZER_DIR = "tokenizer"
INDEX_FILE = "index.json"


class Piece(NamedTuple):
    """A stretch of one document: the unit a worker encodes. EOS follows the document's last piece."""

    text: str
    supervised: bool = True
    allow_special: bool = False
    eos: bool = True
    eos_loss: bool = True  # whether the EOS that ends this document is a supervised target


@dataclass
class SourceShard:
    path: Path
    tokens: int
    mask: Path | None

    def problem(self, dtype: np.dtype) -> str | None:
        """Why this shard cannot be read as indexed (a truncated or replaced file), or None."""
        for path, itemsize in ((self.path, np.dtype(dtype).itemsize), (self.mask, 1)):
            if path is None:
                continue
            want = self.tokens * itemsize
            size = path.stat().st_size if path.is_file() else None
            if size != want:
                return f"{path} is {'missing' if size is None else f'{size:,} bytes'}, the index says {want:,}"
        return None

    def open(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
        problem = self.problem(dtype)
        if problem:
            raise FlmError(
                f"prepared data damaged: {problem}; delete {self.path.parent} and run `flm data prepare` again"
            )
        toks = np.memmap(self.path, dtype=dtype, mode="r", shape=(self.tokens,))
        mask = (
            None
            if self.mask is None
            else np.memmap(self.mask, dtype=np.uint8, mode="r", shape=(self.tokens,))
        )
        return toks, mask


@dataclass
class SourceInfo:
    path: str
    weight: float
    tokens: int
    documents: int
    shards: list[SourceShard] = field(default_factory=list)
    pack: str = "stream"  # "whole": the loader keeps every document whole inside one window
    stream: str | None = None  # the source's content identity, weight aside (None in older indexes)


@dataclass
class PreparedData:
    """A prepared (tokenized, sharded) corpus: what the loader and the trainer consume."""

    dir: Path
    index: dict[str, Any]
    tokenizer: Tokenizer
    reused: bool = False

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def hash(self) -> str:
        return self.index["hash"]

    @property
    def train_hash(self) -> str:
        """The training stream's identity (see ``_content_hash``); older indexes: the whole hash."""
        return self.index.get("train_hash", self.index["hash"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.index["dtype"])

    @property
    def tokens(self) -> dict[str, int]:
        return {split: info["tokens"] for split, info in self.index["splits"].items()}

    @property
    def train_tokens(self) -> int:
        return self.tokens.get("train", 0)

    @property
    def valid_tokens(self) -> int:
        return self.tokens.get("valid", 0)

    def sources(self, split: str) -> list[SourceInfo]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        out = []
        for src in self.index["splits"].get(split, {}).get("sources", []):
            shards = [
                SourceShard(
                    self.dir / s["file"], s["tokens"], self.dir / s["mask"] if s.get("mask") else None
                )
                for s in src["shards"]
            ]
            out.append(SourceInfo(src["path"], src["weight"], src["tokens"], src["documents"], shards,
                                  src.get("pack", "stream"), src.get("stream")))
        return out


def load_prepared(directory: str | os.PathLike[str]) -> PreparedData:
    """Open a folder that ``prepare_data`` wrote."""
    d = Path(directory).absolute()  # shard paths must not depend on a later chdir
    try:
        index = json.loads((d / INDEX_FILE).read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"format {index.get('format')}, expected {FORMAT}")
    except FileNotFoundError:
        raise FlmError(
            f"{d} is not a prepared data folder (no {INDEX_FILE}); run `flm data prepare`"
        ) from None
    except (OSError, ValueError) as e:
        raise FlmError(f"{d / INDEX_FILE}: unreadable ({e}); delete the folder and prepare again") from None
    return PreparedData(d, index, load_tokenizer(d / TOKENIZER_DIR))


# ---------------------------------------------------------------------------------------------- sources


@dataclass
class _Source:
    where: str  # "data.train[0]", for error messages
    path: str
    weight: float
    files: list[Path]
    pack: str = "stream"
    teacher: TeacherSource | None = None  # kind = "teacher": samples made from labelled items, no files


def prepared_folders(path: Path) -> list[Path]:
    """``path`` when it is a prepared data folder, else every prepared folder directly under it."""
    if not path.is_dir():
        raise FlmError(
            f"no such folder: {path}; give a prepared data folder (data/prepared/<hash>)"
        )
    if (path / INDEX_FILE).is_file():
        return [path]
    folders = sorted(p.parent for p in path.glob(f"*/{INDEX_FILE}"))
    if not folders:
        raise FlmError(f"{path} holds no prepared data ({INDEX_FILE} missing); run `flm data prepare` first")
    return folders


def _file_kind(p: Path) -> str | None:
    name = p.name.lower().removesuffix(".gz")
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return None


def _resolve(src: DataSource, where: str, root: Path, split: str) -> _Source:
    if src.kind == "teacher":
        teacher = TeacherSource(src, where, "train" if split == "train" else "heldout", root)
        return _Source(where, src.path or teacher.describe(), src.weight, [], src.packing, teacher)
    assert src.path is not None  # the config refuses a text source without one
    pattern = src.path if os.path.isabs(src.path) else str(root / src.path)
    if glob.has_magic(pattern):
        matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
        if not matches:
            raise FlmError(
                f"{where}.path: {src.path!r} matches no files (looked from {root.resolve()}); "
                "fix the glob (paths are relative to the current directory)"
            )
    else:
        p = Path(pattern)
        if p.is_dir():
            matches = sorted(f for f in p.rglob("*") if f.is_file() and _file_kind(f))
            if not matches:
                raise FlmError(
                    f"{where}.path: folder {p} has no .txt, .md or .jsonl(.gz) files; point it at text"
                )
        elif p.is_file():
            matches = [p]
        else:
            raise FlmError(
                f"{where}.path: file not found: {p} (looked from {root.resolve()}); fix the path "
                "(paths are relative to the current directory)"
            )
    for m in matches:
        if _file_kind(m) is None:
            raise FlmError(
                f"{where}.path: {m}: unsupported file type; use .txt, .md or .jsonl (each optionally .gz)"
            )
        problem = _not_text(m, where, src.allow_undecodable)
        if problem:
            raise FlmError(f"{where}.path: {m} {problem[0]}; {problem[1]}")
    return _Source(where, src.path, src.weight, matches, src.packing)


SNIFF_BYTES = 1 << 16  # the start of every file is checked: enough to tell text from UTF-16 or binary
BAD_SHARE = 0.01  # more than 1% NUL bytes, replacement or control characters: not UTF-8 text


def _not_text(path: Path, where: str, allow_undecodable: bool = False) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) when the start of ``path`` is not UTF-8 text (NUL bytes: UTF-16 or binary;
    undecodable bytes, e.g. Latin-1; control characters) or a ``.gz`` is not gzip; else None. Empty files pass
    (the loader says what is missing); ``allow_undecodable`` passes any bytes that can be read."""
    gz = path.name.lower().endswith(".gz")
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            raw = f.read(SNIFF_BYTES)
    except gzip.BadGzipFile:
        return "ends in .gz but is not gzip-compressed", f"rename it to {path.name[:-3]} (or compress it: gzip)"
    except EOFError:
        return "is a cut-off gzip file (it ends early)", "compress the whole file again (gzip)"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})", "check the file and its permissions"
    if not raw or allow_undecodable:
        return None
    anyway = f"or set {where}.allow_undecodable = true to train on it anyway"
    if raw.count(0) > BAD_SHARE * len(raw):
        why = f"{raw.count(0) / len(raw):.0%} NUL bytes: UTF-16 or binary"
        return f"does not look like UTF-8 text ({why})", f"convert it (e.g. iconv -f UTF-16 -t UTF-8), {anyway}"
    text = raw.decode("utf-8", errors="replace")
    undecodable = text.count("\ufffd")
    control = sum(ord(ch) < 32 and ch not in "\t\n\r\f" for ch in text)
    if undecodable > BAD_SHARE * len(text) >= control:  # 8-bit text (few control characters): Latin-1 or so
        why = f"{undecodable / len(text):.0%} bytes that are not UTF-8: Latin-1 or another 8-bit encoding"
        return f"does not look like UTF-8 text ({why})", f"convert it (e.g. iconv -f LATIN1 -t UTF-8), {anyway}"
    if undecodable + control > BAD_SHARE * len(text):
        why = f"{(undecodable + control) / len(text):.0%} undecodable bytes or control characters"
        return f"does not look like UTF-8 text ({why})", f"check that it is text, {anyway}"
    return None


def _resolve_all(data_cfg: DataConfig, root: Path) -> dict[str, list[_Source]]:
    if not data_cfg.train:
        raise FlmError('data.train lists no sources; add [[data.train]] with path = "..."')
    return {
        split: [_resolve(s, f"data.{split}[{i}]", root, split) for i, s in enumerate(getattr(data_cfg, split))]
        for split in SPLITS
    }


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def _split_lines(lines: Iterable[str], limit: int) -> Iterator[str]:
    """Join lines into pieces of about ``limit`` characters, cutting only before a line that starts with a
    non-space character: the GPT-2 and cl100k split patterns never join across such a cut, so the pieces
    tokenize exactly like the whole."""
    buf: list[str] = []
    size = 0
    for line in lines:
        if size >= limit and line[:1] and not line[:1].isspace():
            yield "".join(buf)
            buf, size = [], 0
        buf.append(line)
        size += len(line)
    if buf:
        yield "".join(buf)


def _text_pieces(text: str, limit: int) -> Iterator[Piece]:
    if len(text) <= limit:
        yield Piece(text)
        return
    parts = list(_split_lines(text.splitlines(keepends=True), limit))
    for i, part in enumerate(parts):
        yield Piece(part, eos=i == len(parts) - 1)


def _jsonl_document(obj: Any, path: Path, lineno: int, where: str) -> list[Piece]:
    loc = f"{where}: {path}:{lineno}"
    if not isinstance(obj, dict):
        raise FlmError(f'{loc}: expected a JSON object like {{"text": "..."}}, got {type(obj).__name__}')
    if "text" in obj:
        if not isinstance(obj["text"], str):
            raise FlmError(f'{loc}: "text" must be a string, got {type(obj["text"]).__name__}')
        return list(_text_pieces(obj["text"], CHUNK_CHARS)) if obj["text"] else []
    if "messages" in obj:
        segments = chat_segments(obj["messages"], loc)
        return [Piece(t, supervised=sup, eos=i == len(segments) - 1) for i, (t, sup) in enumerate(segments)]
    if "prompt" in obj and "response" in obj:  # instruction data: plain text, the loss on the response
        prompt, response = obj["prompt"], obj["response"]
        if not isinstance(prompt, str) or not isinstance(response, str) or not response:
            raise FlmError(f'{loc}: "prompt" and "response" must be strings, the response non-empty')
        return [Piece(prompt, supervised=False, eos=False)] * bool(prompt) + [Piece(response)]
    if "prompt" in obj and "completion" in obj:
        prompt, completion = obj["prompt"], obj["completion"]
        if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
            raise FlmError(f'{loc}: "prompt" and "completion" must be strings, the completion non-empty')
        eos_loss = obj.get("eos_loss", True)
        if not isinstance(eos_loss, bool):
            raise FlmError(f'{loc}: "eos_loss" must be true or false, got {eos_loss!r}')
        pieces = [Piece(prompt, supervised=False, allow_special=True, eos=False)] if prompt else []
        return pieces + [Piece(completion, supervised=True, allow_special=True, eos=True, eos_loss=eos_loss)]
    raise FlmError(
        f'{loc}: no "text" field; each line needs {{"text": "..."}} '
        '(or "prompt" and "completion"/"response", or "messages", for supervised samples)'
    )


def iter_pieces(path: Path, where: str) -> Iterator[Piece]:
    """The pieces of every document in one file, in order."""
    kind = _file_kind(path)
    try:
        with _open_text(path) as f:
            if kind == "text":
                parts = [p for p in _split_lines(f, CHUNK_CHARS) if p]
                for i, part in enumerate(parts):
                    yield Piece(part, eos=i == len(parts) - 1)
                return
            for lineno, obj in json_lines(f, path, where):
                yield from _jsonl_document(obj, path, lineno, where)
    except FileNotFoundError:
        raise FlmError(f"{where}: file not found: {path} (it vanished while reading)") from None
    except (OSError, EOFError) as e:
        raise FlmError(f"{where}: cannot read {path}: {e}; check the file (a truncated .gz?)") from None


def _capped(pieces: Iterable[Piece], max_chars: int | None) -> Iterator[Piece]:
    """Stop after about ``max_chars`` characters: plain text is cut there (and still ends with EOS); a
    prompt/completion document is never cut in half."""
    if max_chars is None:
        yield from pieces
        return
    left, in_doc = max_chars, False
    for p in pieces:
        plain = p.supervised and not p.allow_special
        if left <= 0:
            if not in_doc:
                return
            if plain:  # end the document that the previous piece left open
                yield Piece("", eos=True)
                return
        elif plain and len(p.text) > left:
            yield Piece(p.text[:left], eos=True)
            return
        yield p
        left -= len(p.text)
        in_doc = not p.eos


def teacher_pieces(teacher: TeacherSource) -> Iterator[Piece]:
    """Each sample: the proposition (plain text, no loss), then the label token alone takes the loss."""
    pos, neg = teacher.label_texts()
    for text, true in teacher.samples():
        yield Piece(text, supervised=False, eos=False)
        yield Piece(pos if true else neg, allow_special=True, eos_loss=False)


def source_pieces(src: _Source, max_chars: int | None = None) -> Iterator[Piece]:
    if src.teacher is not None:
        return teacher_pieces(src.teacher)
    return _capped((p for f in src.files for p in iter_pieces(f, src.where)), max_chars)


# ---------------------------------------------------------------------------------------------- hashing


def _source_key(s: _Source, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What identifies a source's stream: its files' contents (not names), weight, packing and samples."""
    key: dict[str, Any] = {"weight": s.weight, "files": [files[str(f)]["sha256"] for f in s.files]}
    if s.pack != "stream":  # only when set: older prepared folders keep their hash
        key["pack"] = s.pack
    if s.teacher is not None:
        key["teacher"] = s.teacher.digest()
    return key


def _content_hash(
    data_cfg: DataConfig, sources: dict[str, list[_Source]], root: Path
) -> tuple[str, str, dict]:
    """Hash of everything that decides the shards' bytes (not the worker count: output is independent), and
    the hash of the training stream alone (file contents, weights, tokenizer; no paths, no validation data):
    a checkpoint's data position stays valid exactly as long as the latter does."""
    files: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        for s in sources[split]:
            for f in s.files:
                files.setdefault(str(f), {"bytes": f.stat().st_size, "sha256": sha256_file(f)})
    tok = data_cfg.tokenizer.model_dump(mode="json")
    if data_cfg.tokenizer.path:
        tp = root / data_cfg.tokenizer.path
        tfiles = (
            sorted(x for x in tp.rglob("*") if x.is_file()) if tp.is_dir() else [tp] if tp.is_file() else []
        )
        tok["files"] = {x.name: sha256_file(x) for x in tfiles}
    key = {
        "format": FORMAT,
        "shard_tokens": SHARD_TOKENS,
        "chunk_chars": CHUNK_CHARS,
        "tokenizer": tok,
        "max_chars": data_cfg.max_chars,
        "splits": {
            split: [_source_key(s, files) for s in sources[split]]
            for split in SPLITS
        },
    }
    train_key = {k: v for k, v in key.items() if k != "splits"} | {"train": key["splits"]["train"]}  # type: ignore[index]

    return _digest(key), _digest(train_key), files


def _name_streams(splits: dict[str, Any], stream_ids: dict[str, list[str]]) -> None:
    for split, ids in stream_ids.items():
        for info, stream_id in zip(splits.get(split, {}).get("sources", []), ids):
            info["stream"] = stream_id


def _digest(k: Any) -> str:
    return hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:16]


def _stream_ids(sources: dict[str, list[_Source]], files: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Per source, the identity of its token stream whatever its weight: a later stage that keeps the source
    (reweighted) can read on where the last one stopped (``TokenLoader.carry_over``)."""
    return {split: [_digest({k: v for k, v in _source_key(s, files).items() if k != "weight"}) for s in srcs]
            for split, srcs in sources.items()}


# ---------------------------------------------------------------------------------------------- encoding

_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process: no oversubscription
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = load_tokenizer(tokenizer_dir)


def encode_pieces(
    pieces: list[Piece], tokenizer: Tokenizer | None = None, dtype: str = "uint32"
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Token ids of ``pieces`` (EOS after each document), their loss mask (None = all supervised), chars."""
    tok = tokenizer or _WORKER_TOKENIZER
    assert tok is not None, "worker not initialised"
    ids: list[list[int] | None] = [None] * len(pieces)
    for allow in (False, True):
        picked = [i for i, p in enumerate(pieces) if p.allow_special == allow]
        if picked:
            for i, enc in zip(
                picked, tok.encode_batch([pieces[i].text for i in picked], allow_special=allow)
            ):
                ids[i] = enc
    flat: list[int] = []
    masks: list[tuple[int, bool]] = []  # (run length, supervised)
    for p, seq in zip(pieces, ids):
        assert seq is not None
        flat.extend(seq)
        masks.append((len(seq), p.supervised))
        if p.eos:
            flat.append(tok.eos_id)
            masks.append((1, p.eos_loss))
    tokens = np.asarray(flat, dtype=dtype)
    mask = None
    if not all(sup for _, sup in masks):
        mask = np.repeat(np.array([sup for _, sup in masks], np.uint8), [n for n, _ in masks])
    return tokens, mask, sum(len(p.text) for p in pieces)


def _work_items(pieces: Iterable[Piece], limit: int = CHUNK_CHARS) -> Iterator[list[Piece]]:
    batch: list[Piece] = []
    size = 0
    for p in pieces:
        batch.append(p)
        size += len(p.text)
        if size >= limit:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _ShardWriter:
    """Appends tokens to <split>_NNN.bin files (and .mask files where needed), a new shard per source."""

    def __init__(self, out: Path, split: str, dtype: np.dtype) -> None:
        self.out, self.split, self.dtype = out, split, dtype
        self.shards: list[dict[str, Any]] = []
        self._tok: io.BufferedWriter | None = None
        self._mask: io.BufferedWriter | None = None
        self._n = 0

    def new_source(self) -> list[dict[str, Any]]:
        self.close()
        return self.shards

    def _open(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.shards):03d}"
        self.shards.append({"file": f"{name}.bin", "tokens": 0, "mask": None})
        self._tok = open(self.out / f"{name}.bin", "wb")
        self._n = 0

    def write(self, tokens: np.ndarray, mask: np.ndarray | None) -> None:
        pos = 0
        while pos < len(tokens):
            if self._tok is None or self._n >= SHARD_TOKENS:
                self._open()
            take = min(len(tokens) - pos, SHARD_TOKENS - self._n)
            assert self._tok is not None
            tokens[pos : pos + take].astype(self.dtype, copy=False).tofile(self._tok)
            if mask is not None and self._mask is None:  # first unsupervised token in this shard
                name = self.shards[-1]["file"].replace(".bin", ".mask")
                self.shards[-1]["mask"] = name
                self._mask = open(self.out / name, "wb")
                np.ones(self._n, np.uint8).tofile(self._mask)
            if self._mask is not None:
                part = np.ones(take, np.uint8) if mask is None else mask[pos : pos + take]
                part.tofile(self._mask)
            self._n += take
            self.shards[-1]["tokens"] = self._n
            pos += take

    def close(self) -> None:
        for f in (self._tok, self._mask):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        self._tok = self._mask = None


@contextlib.contextmanager
def _worker_pool(workers: int, tokenizer_dir: Path) -> Iterator[ProcessPoolExecutor | None]:
    """``workers`` tokenizer processes (None for 1: encode in this process).

    Linux forks (like torch's DataLoader): spawn would re-run a calling script that lacks an
    ``if __name__ == "__main__"`` guard. TOKENIZERS_PARALLELISM is set while forking so that HF tokenizers
    neither warns nor threads inside the workers, then restored for this process.
    """
    if workers == 1:
        yield None
        return
    method = "fork" if sys.platform == "linux" else "spawn"
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    pool = ProcessPoolExecutor(
        workers, mp_context=get_context(method), initializer=_init_worker, initargs=(str(tokenizer_dir),)
    )
    try:
        pool.submit(int).result()  # fork every worker now, while the variable is set
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def _ordered_results(
    fn: Callable[[list[Piece]], Any],
    items: Iterable[list[Piece]],
    pool: ProcessPoolExecutor | None,
    inflight: int,
) -> Iterator[Any]:
    """``map(fn, items)`` in order, with at most ``inflight`` items queued in the workers (bounded memory)."""
    if pool is None:
        yield from map(fn, items)
        return
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= inflight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ---------------------------------------------------------------------------------------------- prepare


def _count(src: _Source, max_chars: int | None) -> tuple[int, int]:
    """(documents, characters) of a source; an empty source is a user error."""
    docs = chars = 0
    blank = True  # only whitespace so far: it would tokenize to almost nothing, refused at train time
    for p in source_pieces(src, max_chars):
        docs += p.eos
        chars += len(p.text)
        blank = blank and not p.text.strip()
    if blank:
        names = ", ".join(str(f) for f in src.files[:3]) + (" ..." if len(src.files) > 3 else "")
        what = f"only whitespace ({chars:,} characters)" if chars else "no text"
        raise FlmError(
            f"{src.where}: {what} in {names}: the corpus is empty; point {src.where}.path at text"
        )
    return docs, chars


def _reuse_cached(final: Path, sources: dict[str, list[_Source]]) -> PreparedData | None:
    """The prepared folder of the same contents, if it is there and undamaged (a damaged one is removed)."""
    if not (final / INDEX_FILE).is_file():
        return None
    prepared = load_prepared(final)
    problems = [
        pr for split in SPLITS for src in prepared.sources(split) for sh in src.shards
        if (pr := sh.problem(prepared.dtype))
    ]
    if not problems:
        prepared.reused = True
        for split in SPLITS:  # the hash is of contents: name the sources as this config does
            for entry, src in zip(prepared.index["splits"].get(split, {}).get("sources", []), sources[split]):
                entry["path"] = src.path
        return prepared
    print(f"note: cached data damaged ({problems[0]}); preparing it again", file=sys.stderr)
    shutil.rmtree(final)
    return None


def _corpus_tokenizer(
    data_cfg: DataConfig, sources: dict[str, list[_Source]], root: Path, model: ModelConfig | None, bar: Bar
) -> Tokenizer:
    """The config's tokenizer (a BPE is trained on the training text), checked against the model's vocabulary
    and the teacher sources' label tokens."""
    tok_cfg = data_cfg.tokenizer
    if tok_cfg.kind == "bpe":
        bpe = bar.add(f"training BPE ({tok_cfg.vocab_size} tokens)")
        texts = (  # teacher samples stay out: adding them (in a late stage) keeps the tokenizer
            p.text for s in sources["train"] if s.teacher is None for p in source_pieces(s, data_cfg.max_chars)
        )
        tokenizer = build_tokenizer(tok_cfg, texts, root=root)
        bpe.update(total=1, completed=1)
    else:
        tokenizer = build_tokenizer(tok_cfg, root=root)
    if model is not None and tokenizer.vocab_size > model.vocab_size:
        raise vocab_error(tokenizer.vocab_size, model.vocab_size)
    for s in (s for split in SPLITS for s in sources[split] if s.teacher is not None):
        resolve_labels(s.teacher.source.labels, tokenizer, s.where)
    return tokenizer


def _clear_abandoned(base: Path, digest: str) -> None:
    """Remove the temporary folders of earlier preparations of this data on this host whose process is gone
    (killed mid-way: never read, but never cleaned either). Another host's may still be working: kept."""
    host = socket.gethostname()
    for p in base.glob(f".tmp-{digest}-{host}-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def prepare_data(
    data_cfg: DataConfig,
    *,
    root: Path = Path("."),
    progress: bool = True,
    model: ModelConfig | None = None,
) -> PreparedData:
    """Tokenize ``data_cfg``'s sources into ``data_cfg.prepared_dir/<hash>/`` or reuse that folder.

    ``model``: when given, a tokenizer larger than ``model.vocab_size`` is refused before any tokenizing.
    """
    root = Path(root)
    sources = _resolve_all(data_cfg, root)
    digest, train_digest, file_info = _content_hash(data_cfg, sources, root)
    base = Path(data_cfg.prepared_dir)
    base = base if base.is_absolute() else root / base
    final = base / digest
    stream_ids = _stream_ids(sources, file_info)
    cached = _reuse_cached(final, sources)
    if cached is not None:
        _name_streams(cached.index["splits"], stream_ids)  # older indexes lack them
        return cached

    tok_cfg = data_cfg.tokenizer
    if model is not None and tok_cfg.kind == "bpe" and tok_cfg.vocab_size > model.vocab_size:
        raise vocab_error(tok_cfg.vocab_size, model.vocab_size)
    made_base = not base.exists()
    base.mkdir(parents=True, exist_ok=True)
    _clear_abandoned(base, digest)
    tmp = base / f".tmp-{digest}-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    t0 = time.time()
    try:
        n_sources = sum(len(sources[split]) for split in SPLITS)
        with progress_bar("reading", n_sources, enabled=progress, transient=False, unit=None) as bar:
            counts: dict[str, list[tuple[int, int]]] = {split: [] for split in SPLITS}
            for split in SPLITS:  # a first pass finds empty or malformed input before any long work
                for s in sources[split]:
                    counts[split].append(_count(s, data_cfg.max_chars if split == "train" else None))
                    bar.advance()
            tokenizer = _corpus_tokenizer(data_cfg, sources, root, model, bar)
            tokenizer.save(tmp / TOKENIZER_DIR)
            dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
            total_chars = sum(c for split in SPLITS for _, c in counts[split])
            splits = _tokenize_all(data_cfg, sources, counts, tokenizer, tmp, dtype, bar.add("tokenizing", total_chars))
        _name_streams(splits, stream_ids)
        index = {
            "format": FORMAT,
            "hash": digest,
            "train_hash": train_digest,
            "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size,
            "special": tokenizer.special,
            "tokenizer": tok_cfg.model_dump(mode="json") | {"describe": tokenizer.describe()},
            "max_chars": data_cfg.max_chars,
            "splits": splits,
            "files": file_info,
            "seconds": round(time.time() - t0, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write(tmp / INDEX_FILE, json.dumps(index, indent=1))
        if final.exists() and not (final / INDEX_FILE).exists():  # debris of an older, interrupted tool
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same folder first: theirs is identical
            if not (final / INDEX_FILE).is_file():
                raise
    except OSError as e:  # a full disk: one line (the finally below removes the half-written folder)
        raise_if_disk_full(e, base, "free space (or set data.prepared_dir to another disk), then run it again")
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_base and not final.exists():  # refused input leaves no empty folder behind
            with contextlib.suppress(OSError):
                base.rmdir()
    prepared = load_prepared(final)
    _name_streams(prepared.index["splits"], stream_ids)  # another process may have built the folder first
    return prepared


def _tokenize_all(
    data_cfg: DataConfig,
    sources: dict[str, list[_Source]],
    counts: dict[str, list[tuple[int, int]]],
    tokenizer: Tokenizer,
    out: Path,
    dtype: np.dtype,
    bar: Bar,
) -> dict[str, Any]:
    workers = data_cfg.workers
    if workers == 1:

        def fn(item: list[Piece]) -> Any:
            return encode_pieces(item, tokenizer)

    else:
        fn = encode_pieces
    done = 0
    splits: dict[str, Any] = {}
    with _worker_pool(workers, out / TOKENIZER_DIR) as pool:
        for split in SPLITS:
            writer = _ShardWriter(out, split, dtype)
            infos = []
            for src, (docs, chars) in zip(sources[split], counts[split]):
                first = len(writer.new_source())
                n_tokens = 0
                max_chars = data_cfg.max_chars if split == "train" else None
                items = _work_items(source_pieces(src, max_chars))
                for tokens, mask, n_chars in _ordered_results(fn, items, pool, 2 * workers + 2):
                    writer.write(tokens, mask)
                    n_tokens += len(tokens)
                    done += n_chars
                    bar.update(completed=done, info=f"{split} {n_tokens / 1e6:.2f}M tokens")
                infos.append(
                    {
                        "path": src.path,
                        "weight": src.weight,
                        "pack": src.pack,
                        "files": [str(f) for f in src.files],
                        "documents": docs,
                        "characters": chars,
                        "tokens": n_tokens,
                        "shards": writer.new_source()[first:],
                    }
                )
            writer.close()
            splits[split] = {"tokens": sum(i["tokens"] for i in infos), "sources": infos}
    return splits
