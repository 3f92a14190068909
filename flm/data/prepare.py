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
from typing import Any

import numpy as np

from flm.config import DataConfig, ModelConfig
from flm.data import sources
from flm.data.sources import (
    SPLITS,
    Piece,
    _count,
    _digest,
    _name_streams,
    _resolve_all,
    _Source,
    _source_key,
    _stream_ids,
    source_pieces,
)
from flm.data.teacher import resolve_labels
from flm.data.tokenizer import Tokenizer, build_tokenizer, check_vocab, load_tokenizer, vocab_error
from flm.errors import FlmError
from flm.io import atomic_write, raise_if_disk_full, sha256_file
from flm.log import get_logger
from flm.progress import Bar, progress_bar

log = get_logger(__name__)

FORMAT = 1
SHARD_TOKENS = 1 << 28  # tokens per shard file (512 MiB at uint16)
CHUNK_CHARS = 1 << 20  # characters per work item sent to a worker (and per piece: flm.data.sources)
TOKENIZER_DIR = "tokenizer"
INDEX_FILE = "index.json"


def iter_pieces(path: Path, where: str) -> Iterator[Piece]:
    """The pieces of one file (``flm.data.sources.iter_pieces``) at this module's CHUNK_CHARS: one setting for
    the pieces and the work items sent to the workers."""
    return sources.iter_pieces(path, where, CHUNK_CHARS)


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
    log.warning(f"note: cached data damaged ({problems[0]}); preparing it again")
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
            p.text for s in sources["train"] if s.teacher is None
            for p in source_pieces(s, data_cfg.max_chars, CHUNK_CHARS)
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


def _write_shards(data_cfg: DataConfig, sources: dict[str, list[_Source]], root: Path, model: ModelConfig | None,
                  tmp: Path, progress: bool) -> tuple[Tokenizer, np.dtype, dict[str, Any]]:
    """Count every source (a first pass finds empty or malformed input before any long work), build the
    tokenizer, then tokenize into ``tmp``: (tokenizer, token dtype, the index's "splits")."""
    n_sources = sum(len(sources[split]) for split in SPLITS)
    with progress_bar("reading", n_sources, enabled=progress, transient=False, unit=None) as bar:
        counts: dict[str, list[tuple[int, int]]] = {split: [] for split in SPLITS}
        for split in SPLITS:
            for s in sources[split]:
                counts[split].append(_count(s, data_cfg.max_chars if split == "train" else None))
                bar.advance()
        tokenizer = _corpus_tokenizer(data_cfg, sources, root, model, bar)
        tokenizer.save(tmp / TOKENIZER_DIR)
        dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
        total_chars = sum(c for split in SPLITS for _, c in counts[split])
        splits = _tokenize_all(data_cfg, sources, counts, tokenizer, tmp, dtype, bar.add("tokenizing", total_chars))
    return tokenizer, dtype, splits


def prepare_data(data_cfg: DataConfig, *, root: Path = Path("."), progress: bool = True,
                 model: ModelConfig | None = None) -> PreparedData:
    """Tokenize ``data_cfg``'s sources into ``data_cfg.prepared_dir/<hash>/`` or reuse that folder.

    ``model``: when given, a tokenizer larger than ``model.vocab_size`` is refused (before any tokenizing).
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
        if model is not None:  # a cache made for another model (or none): the same refusal as below
            check_vocab(cached.tokenizer, model)
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
        tokenizer, dtype, splits = _write_shards(data_cfg, sources, root, model, tmp, progress)
        _name_streams(splits, stream_ids)
        index = {"format": FORMAT, "hash": digest, "train_hash": train_digest, "dtype": dtype.name,
                 "vocab_size": tokenizer.vocab_size, "special": tokenizer.special,
                 "tokenizer": tok_cfg.model_dump(mode="json") | {"describe": tokenizer.describe()},
                 "max_chars": data_cfg.max_chars, "splits": splits, "files": file_info,
                 "seconds": round(time.time() - t0, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
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
                items = _work_items(source_pieces(src, max_chars, CHUNK_CHARS))
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
