"""Text sources -> pieces: what ``flm data prepare`` reads. A ``[[data.train]]`` / ``[[data.valid]]`` entry is
resolved to its files (globs, .gz, a check that they are UTF-8 text) or to a teacher source, and every file is
read as a stream of ``Piece``s (stretches of one document, with the supervision of prompt/completion JSONL).
flm.data.prepare tokenizes the pieces into shards.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from flm.config import DataConfig, DataSource
from flm.data.instruct import chat_segments
from flm.data.jsonl import json_lines
from flm.data.teacher import TeacherSource
from flm.errors import FlmError

SPLITS = ("train", "valid")
CHUNK_CHARS = 1 << 20  # characters per piece at most: a long document is cut into pieces of this size
TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class Piece(NamedTuple):
    """A stretch of one document: the unit a worker encodes. EOS follows the document's last piece."""

    text: str
    supervised: bool = True
    allow_special: bool = False
    eos: bool = True
    eos_loss: bool = True  # whether the EOS that ends this document is a supervised target



@dataclass
class _Source:
    where: str  # "data.train[0]", for error messages
    path: str
    weight: float
    files: list[Path]
    pack: str = "stream"
    teacher: TeacherSource | None = None  # kind = "teacher": samples made from labelled items, no files


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


def _jsonl_document(obj: Any, path: Path, lineno: int, where: str, chunk: int = CHUNK_CHARS) -> list[Piece]:
    loc = f"{where}: {path}:{lineno}"
    if not isinstance(obj, dict):
        raise FlmError(f'{loc}: expected a JSON object like {{"text": "..."}}, got {type(obj).__name__}')
    if "text" in obj:
        if not isinstance(obj["text"], str):
            raise FlmError(f'{loc}: "text" must be a string, got {type(obj["text"]).__name__}')
        return list(_text_pieces(obj["text"], chunk)) if obj["text"] else []
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


def iter_pieces(path: Path, where: str, chunk: int = CHUNK_CHARS) -> Iterator[Piece]:
    """The pieces of every document in one file, in order."""
    kind = _file_kind(path)
    try:
        with _open_text(path) as f:
            if kind == "text":
                parts = [p for p in _split_lines(f, chunk) if p]
                for i, part in enumerate(parts):
                    yield Piece(part, eos=i == len(parts) - 1)
                return
            for lineno, obj in json_lines(f, path, where):
                yield from _jsonl_document(obj, path, lineno, where, chunk)
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


def source_pieces(src: _Source, max_chars: int | None = None, chunk: int = CHUNK_CHARS) -> Iterator[Piece]:
    if src.teacher is not None:
        return teacher_pieces(src.teacher)
    return _capped((p for f in src.files for p in iter_pieces(f, src.where, chunk)), max_chars)


# ---------------------------------------------------------------------------------------------- hashing


def _count(src: _Source, max_chars: int | None) -> tuple[int, int]:
    """(documents, characters) of a source; an empty source is a user error."""
    docs = chars = 0
    blank = True  # only whitespace so far: it would tokenize to almost nothing, refused at train time
    for p in source_pieces(src, max_chars, CHUNK_CHARS):
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


def _source_key(s: _Source, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What identifies a source's stream: its files' contents (not names), weight, packing and samples."""
    key: dict[str, Any] = {"weight": s.weight, "files": [files[str(f)]["sha256"] for f in s.files]}
    if s.pack != "stream":  # only when set: older prepared folders keep their hash
        key["pack"] = s.pack
    if s.teacher is not None:
        key["teacher"] = s.teacher.digest()
    return key


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
