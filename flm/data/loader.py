"""A deterministic, resumable loader over prepared token shards.

Each source's token stream (documents ended by EOS, packed GPT-style across document boundaries) is cut into
windows of ``seq_len + 1`` tokens at stride ``seq_len``: window w gives inputs ``t[wT : wT+T]`` and targets
``t[wT+1 : wT+T+1]``. The loss mask of a target is the mask of that token (1 everywhere for plain text).
A source with ``pack = "whole"`` (teacher signals by default; instruction data) is cut instead into windows of
whole consecutive documents (flm.data.packing): no sample is ever split across windows, one longer than a
window is dropped and counted (``dropped``), and the rest of a window is padding that takes no loss.

Train: global sample number k (counting rows of global batches from the start of training) is drawn from a
source chosen by a counter-based hash of (seed, k) with the sources' weights, and takes that source's next
window in a per-epoch permutation seeded by (seed, source, epoch). Everything is a function of k and the
per-source counters, so:

- the global batch of a step does not depend on the number of ranks: rank r of W takes rows
  ``r*B : (r+1)*B`` of the ``W*B`` rows (2 ranks x B see exactly what 1 rank x 2B sees);
- ``state_dict`` is a few integers, the same on every rank; a resumed loader yields exactly the batches an
  uninterrupted one would, even if batch size or world size change in between.

Valid: every window of every source in order, cyclically; ``valid_batches(n)`` is the same n batches every
time it is called.

With ``document_ids=True`` (``data.document_mask``) a batch carries a fourth tensor: the document each input
position belongs to (flm.data.packing.document_ids), which the model's attention stays inside.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from flm.config import weights_problem
from flm.data.packing import document_ends, document_ids, pack_whole
from flm.data.prepare import PreparedData, SourceInfo
from flm.errors import FlmError

STATE_FORMAT = 1
_U64 = np.uint64
# (inputs int64 [B,T], targets int64 [B,T], loss_mask float32 [B,T]), and document ids int64 [B,T] when asked
Batch = tuple[torch.Tensor, ...]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x.astype(_U64) + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def uniform_hash(seed: int, k: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1), a pure function of (seed, k): the same on every rank and after resume."""
    key = _splitmix64(np.array([seed % (1 << 64)], dtype=_U64))
    with np.errstate(over="ignore"):
        h = _splitmix64(k.astype(_U64) + key)
    return (h >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


class _Stream:
    """One source's shards as one token stream, cut into windows: at stride seq_len (``pack = "stream"``), or
    (``"whole"``) packed from whole documents, a document longer than a window dropped and counted."""

    def __init__(self, info: SourceInfo, dtype: np.dtype, seq_len: int, eos_id: int) -> None:
        self.info = info
        opened = [s.open(dtype) for s in info.shards]
        self.tokens = [t for t, _ in opened]
        self.masks = [m for _, m in opened]
        self.has_mask = any(m is not None for m in self.masks)
        self.offsets = np.cumsum([0] + [len(t) for t in self.tokens])
        self.n = int(self.offsets[-1])
        self.seq_len, self.dropped = seq_len, 0
        self.starts: np.ndarray | None = None
        if info.pack == "whole":
            self.starts, self.lengths, self.dropped = pack_whole(document_ends(self.tokens, eos_id), seq_len + 1)
        self.windows = (self.n - 1) // seq_len if self.starts is None else len(self.starts)

    def span(self, w: int) -> tuple[int, int]:
        """(stream offset, tokens) of window ``w``; fewer than seq_len + 1 tokens leave padding."""
        if self.starts is None:
            return w * self.seq_len, self.seq_len + 1
        return int(self.starts[w]), int(self.lengths[w])

    def read(self, start: int, n: int, out_tok: np.ndarray, out_mask: np.ndarray) -> None:
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pos, filled = start - int(self.offsets[i]), 0
        while filled < n:  # usually one pass; more only when a window spans shards
            take = min(n - filled, len(self.tokens[i]) - pos)
            out_tok[filled : filled + take] = self.tokens[i][pos : pos + take]
            mask = self.masks[i]
            out_mask[filled : filled + take] = 1.0 if mask is None else mask[pos : pos + take]
            filled += take
            i, pos = i + 1, 0


class TokenLoader:
    """Yields ``(inputs int64 [B,T], targets int64 [B,T], loss_mask float32 [B,T])`` batches for one rank,
    with ``document_ids=True`` also each input position's document (int64 [B,T]).

    ``batch_size`` is the per-rank micro batch B; one call consumes a global batch of ``B * world_size``
    sequences of which this rank gets rows ``rank*B : (rank+1)*B``.
    """

    def __init__(
        self,
        prepared: PreparedData,
        split: str = "train",
        seq_len: int = 256,
        batch_size: int = 8,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool | None = None,
        document_ids: bool = False,
    ) -> None:
        if seq_len <= 0 or batch_size <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(
                f"bad loader shape: seq_len={seq_len} batch_size={batch_size} rank={rank}/{world_size}"
            )
        self.split, self.seq_len, self.batch_size = split, seq_len, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle = (split == "train") if shuffle is None else shuffle
        # what a saved position is valid for: the training stream (moving or re-validating it keeps it)
        self.data_hash = prepared.train_hash if split == "train" else prepared.hash
        infos = prepared.sources(split)
        if not infos:
            raise FlmError(
                f"no {split} data: the config lists no data.{split} sources; "
                f'add [[data.{split}]] path = "..."'
                + (" (or set train.eval_every = 0 to train without validation)" if split == "valid" else "")
            )
        self.pad_id, self.eos_id = prepared.tokenizer.pad_id, prepared.tokenizer.eos_id
        self.document_ids = document_ids
        self.streams = [_Stream(info, prepared.dtype, seq_len, prepared.tokenizer.eos_id) for info in infos]
        self.windows = np.array([s.windows for s in self.streams], dtype=np.int64)
        for s, w in zip(self.streams, self.windows):
            if w == 0 and s.starts is not None:
                raise FlmError(
                    f"data.{split} source {s.info.path!r}: all {s.dropped} samples are longer than seq_len + 1 = "
                    f"{seq_len + 1} tokens and none fits a window whole: raise train.seq_len or shorten the samples"
                )
            if w == 0:
                raise FlmError(
                    f"data.{split} source {s.info.path!r} has {s.n} tokens, fewer than seq_len + 1 = "
                    f"{seq_len + 1}: add text to it or lower train.seq_len"
                )
        weights = np.array([info.weight for info in infos], dtype=np.float64)
        problem = weights_problem(weights.tolist(), f"data.{split}")
        if problem:
            raise FlmError(problem)
        self._cdf = np.cumsum(weights / weights.sum())
        self._cum_windows = np.cumsum(self.windows)
        self._samples = 0
        self._counts = np.zeros(len(self.streams), dtype=np.int64)
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    # -------------------------------------------------------------------------------------- iteration

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def tokens_per_batch(self) -> int:
        """Tokens in one rank's batch (the global batch has ``world_size`` times as many)."""
        return self.batch_size * self.seq_len

    @property
    def dropped(self) -> list[int]:
        """Per source: samples dropped because they are longer than a window (``pack = "whole"``)."""
        return [s.dropped for s in self.streams]

    def epochs(self) -> list[float]:
        """Passes made over each source so far."""
        if self.split == "train":
            return [float(c / w) for c, w in zip(self._counts, self.windows)]
        return [self._samples / float(self._cum_windows[-1])] * len(self.streams)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return self.next_batch()

    def next_batch(self) -> Batch:
        g = self.global_batch
        if self.split == "train":
            src, win = self._train_rows(self._samples, g, self._counts)
        else:
            src, win = self._sequential_rows(self._samples, g)
        self._samples += g
        return self._gather(src, win)

    def valid_batches(self, n: int) -> Iterator[Batch]:
        """The first ``n`` batches of the sequential (unshuffled) stream, the same on every call."""
        for i in range(n):
            yield self._gather(*self._sequential_rows(i * self.global_batch, self.global_batch))

    def _train_rows(self, start: int, g: int, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source and window of global rows start..start+g-1; advances ``counts`` in place."""
        k = np.arange(start, start + g, dtype=np.int64)
        if len(self.streams) == 1:
            src = np.zeros(g, dtype=np.int64)
        else:
            src = np.minimum(
                np.searchsorted(self._cdf, uniform_hash(self.seed, k), side="right"), len(self.streams) - 1
            )
        ordinal = np.empty(g, dtype=np.int64)
        for s in range(len(self.streams)):
            rows = np.flatnonzero(src == s)
            ordinal[rows] = counts[s] + np.arange(len(rows))
            counts[s] += len(rows)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        src, ordinal = src[mine], ordinal[mine]
        win = np.array([self._window(int(s), int(o)) for s, o in zip(src, ordinal)], dtype=np.int64)
        return src, win

    def _sequential_rows(self, start: int, g: int) -> tuple[np.ndarray, np.ndarray]:
        lo = start + self.rank * self.batch_size
        flat = np.arange(lo, lo + self.batch_size, dtype=np.int64) % self._cum_windows[-1]
        src = np.searchsorted(self._cum_windows, flat, side="right")
        return src, flat - (self._cum_windows[src] - self.windows[src])

    def _window(self, s: int, ordinal: int) -> int:
        n = int(self.windows[s])
        epoch, pos = divmod(ordinal, n)
        if not self.shuffle:
            return pos
        perm = self._perms.get((s, epoch))
        if perm is None:
            for key in [k for k in self._perms if k[0] == s and k[1] < epoch]:
                del self._perms[key]  # keep one epoch per source in memory
            rng = np.random.default_rng([self.seed % (1 << 64), s, epoch, 0x10ADE7])
            perm = rng.permutation(n).astype(np.int32 if n < 1 << 31 else np.int64)
            self._perms[(s, epoch)] = perm
        return int(perm[pos])

    def _gather(self, src: np.ndarray, win: np.ndarray) -> Batch:
        t = self.seq_len
        tok = np.full((len(src), t + 1), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(src), t + 1), dtype=np.float32)  # padding after packed samples takes no loss
        for row, (s, w) in enumerate(zip(src, win)):
            stream = self.streams[int(s)]
            start, n = stream.span(int(w))
            stream.read(start, n, tok[row], mask[row])
        x = torch.from_numpy(np.ascontiguousarray(tok[:, :-1]))
        y = torch.from_numpy(np.ascontiguousarray(tok[:, 1:]))
        mk = torch.from_numpy(np.ascontiguousarray(mask[:, 1:]))
        return (x, y, mk, document_ids(x, self.eos_id)) if self.document_ids else (x, y, mk)

    # -------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Global position (identical on every rank): enough to continue exactly where this loader is."""
        return {
            "format": STATE_FORMAT,
            "split": self.split,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "samples": int(self._samples),
            "counts": [int(c) for c in self._counts],
            "windows": [int(w) for w in self.windows],
            "data_hash": self.data_hash,
            "streams": [s.info.stream for s in self.streams],
        }

    def continues(self, state: dict[str, Any]) -> bool:
        """Whether ``state`` is a position in this very stream (same split, data, seed and seq_len)."""
        return (
            state.get("split") == self.split
            and state.get("data_hash") == self.data_hash
            and state.get("seed") == self.seed
            and state.get("seq_len") == self.seq_len
        )

    def carry_over(self, state: dict[str, Any]) -> bool:
        """Read on from a position in *another* mixture (a stage that adds, drops or reweights sources): a
        source with the same content at the same place in the list keeps its read position, the others start
        from their beginning. False (nothing changed) when no source carries over or seed/seq_len differ."""
        old = state.get("streams") or []
        if state.get("split") != self.split or state.get("seed") != self.seed or state.get("seq_len") != self.seq_len:
            return False
        mine = [s.info.stream for s in self.streams]
        keep = [i < len(old) and k is not None and old[i] == k for i, k in enumerate(mine)]
        if not any(keep):
            return False
        counts = [int(state["counts"][i]) if k else 0 for i, k in enumerate(keep)]
        self._samples, self._counts = int(state["samples"]), np.array(counts, dtype=np.int64)
        return True

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly at ``state``; anything that would make the stream differ is one clear error."""
        try:
            samples, counts = int(state["samples"]), [int(c) for c in state["counts"]]
            seq_len, split = int(state["seq_len"]), state["split"]
        except (KeyError, TypeError, ValueError) as e:
            raise FlmError(f"loader state is malformed ({e!r}); the checkpoint is damaged") from None
        if split != self.split:
            raise FlmError(f"loader state is for the {split!r} split, this loader reads {self.split!r}")
        if seq_len != self.seq_len:
            raise FlmError(
                f"loader state was saved with seq_len {seq_len}, this run uses {self.seq_len}: "
                "keep train.seq_len unchanged when resuming"
            )
        saved_hash, saved_seed = state.get("data_hash"), state.get("seed")
        if saved_hash is not None and saved_hash != self.data_hash:
            raise FlmError(
                f"loader state was saved on prepared data {str(saved_hash)[:12]}, this run reads "
                f"{self.data_hash[:12]}: the corpus, its weights or the tokenizer changed since the checkpoint; "
                "resume with the same [data] (or start a new run folder)"
            )
        if saved_seed is not None and int(saved_seed) != self.seed:
            raise FlmError(
                f"loader state was saved with train.seed {saved_seed}, this run uses {self.seed}: the data order "
                "would differ; keep train.seed unchanged when resuming"
            )
        if len(counts) != len(self.streams):
            raise FlmError(
                f"loader state has {len(counts)} data sources, the config has {len(self.streams)}: "
                "resume with the same data sources"
            )
        self._samples = samples
        self._counts = np.array(counts, dtype=np.int64)
