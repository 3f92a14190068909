"""Small file helpers every layer uses: atomic writes (of a file, of a whole folder), file hashing, the umask
rule, folder fsync."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flm.errors import FlmError


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file (0666 less the umask)."""
    return 0o666 & ~current_umask()


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write to a temp file beside ``path``, fsync, then rename: readers never see half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_folder(folder: Path, files: bool = True) -> None:
    """Flush the folder's files (with ``files``) and its entries to disk, so that a manifest written after
    this never describes data a power loss could still take away."""
    for p in folder.iterdir():
        if p.is_file() and files:
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir() and files:  # e.g. a sharded checkpoint's shard folders: their files and entries
            fsync_folder(p)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``out`` (``.tmp-<name>-<pid>``, cleared first): when the
    block ends without error its files are fsynced and it is renamed to ``out``; on any error it is removed
    (a full disk, however the writer reported it, then raises ``OSError`` ENOSPC naming ``out``).
    Readers never see half a folder. The caller refuses an existing ``out`` (the rename would fail, or
    replace an empty folder)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fsync_folder(tmp)
        tmp.rename(out)
        fsync_folder(out.parent, files=False)  # the rename itself
    except BaseException as e:
        full = is_disk_full(e, tmp)  # before the space is freed: a short write is told by the space left
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise no_space(e, out) from e
        raise


def no_space(e: BaseException, path: Path) -> OSError:
    """The ``OSError`` a full disk (``is_disk_full``) becomes: ENOSPC, or EDQUOT when that was it, naming ``path``."""
    code = e.errno if isinstance(e, OSError) and e.errno in NO_SPACE else errno.ENOSPC
    return OSError(code, os.strerror(code), str(path))


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# How libraries that do not raise OSError report it: safetensors ("... (os error 28)"), torch's zip writer
# (a short write: "unexpected pos"), numpy's tofile ("requested and ... written").
_NO_SPACE_WORDS = ("no space left on device", "disk quota exceeded", "os error 28)", "os error 122)")
NEARLY_FULL_BYTES = 1 << 20  # after a failed write, less free space than this: the disk filled up


def is_disk_full(e: BaseException, path: Path | None = None) -> bool:
    """Whether the write that raised ``e`` failed for want of space: an ``OSError`` ENOSPC/EDQUOT, the same
    wrapped by a library (safetensors' ``SafetensorError``, DCP's ``CheckpointException`` holding each rank's
    error, a chained cause), or (``path`` given) any write error on a file system left nearly full, since
    some writers report a full disk only as a short write."""
    seen: set[int] = set()
    todo: list[BaseException] = [e]
    while todo:
        x = todo.pop()
        if id(x) in seen or isinstance(x, (KeyboardInterrupt, SystemExit, FlmError)):
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in NO_SPACE:
            return True
        if any(w in str(x).lower() for w in _NO_SPACE_WORDS):
            return True
        failures = getattr(x, "failures", None)  # torch.distributed.checkpoint.CheckpointException
        if isinstance(failures, dict):
            todo += [f[0] if isinstance(f, tuple) else f for f in failures.values()]
        todo += [c for c in (x.__cause__, x.__context__) if c is not None]
    if path is None or isinstance(e, (KeyboardInterrupt, SystemExit, FlmError)):
        return False
    return _free_bytes(Path(path)) < NEARLY_FULL_BYTES


def _free_bytes(path: Path) -> float:
    """Space left to this user on the file system of ``path`` (its nearest existing parent)."""
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return float("inf")
    return float("inf")


def raise_if_disk_full(e: BaseException, path: Path, fix: str) -> None:
    """A full disk (or quota) while writing ``path`` becomes one ``FlmError`` line naming ``path``; the caller
    removes what it half-wrote (or has already)."""
    if is_disk_full(e, path):
        quota = isinstance(e, OSError) and e.errno == errno.EDQUOT
        why = f" ({e.strerror})" if quota else ""
        raise FlmError(f"no space left on device writing {path}{why}; nothing half-written is left: {fix}") from None


@contextmanager
def disk_full_is_one_line(path: Path, fix: str) -> Iterator[None]:
    """``raise_if_disk_full`` for the block (whose own cleanup, e.g. ``atomic_folder``, runs first)."""
    try:
        yield
    except BaseException as e:
        raise_if_disk_full(e, path, fix)
        raise
