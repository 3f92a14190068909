"""Packing documents into training windows, and the document structure of a packed window.

``pack_whole``: consecutive documents go greedily into windows of at most ``capacity`` tokens, never cut; a
document longer than a window is dropped (and counted). The loader pads the rest of a window with the pad
token, which takes no loss.

``document_ids``: inside a window, a document starts after every EOS; with ``data.document_mask`` the model
attends only within a document and positions restart at each start (``FLM.forward(..., doc_ids=...)``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def document_ends(tokens: list[np.ndarray], eos_id: int) -> np.ndarray:
    """Stream offsets just past every EOS of a source split into shards (int64)."""
    out, offset = [], 0
    for t in tokens:
        out.append(np.flatnonzero(np.asarray(t) == eos_id).astype(np.int64) + offset + 1)
        offset += len(t)
    ends = np.concatenate(out) if out else np.zeros(0, np.int64)
    if offset and (not len(ends) or ends[-1] != offset):  # a stream that does not end with EOS
        ends = np.append(ends, offset)
    return ends


def pack_whole(ends: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Windows of whole consecutive documents: (starts, lengths, documents dropped for being too long)."""
    starts: list[int] = []
    lengths: list[int] = []
    dropped, doc_start, win_start, win_len = 0, 0, -1, 0
    for end in ends.tolist():
        n = end - doc_start
        if n > capacity:
            dropped += 1
            if win_start >= 0:
                starts.append(win_start)
                lengths.append(win_len)
            win_start, win_len = -1, 0
        elif win_start >= 0 and win_len + n <= capacity:
            win_len += n
        else:
            if win_start >= 0:
                starts.append(win_start)
                lengths.append(win_len)
            win_start, win_len = doc_start, n
        doc_start = end
    if win_start >= 0:
        starts.append(win_start)
        lengths.append(win_len)
    return np.array(starts, np.int64), np.array(lengths, np.int64), dropped


def document_ids(tokens: Tensor, eos_id: int) -> Tensor:
    """(B, T) int: the index of the document each position belongs to; a new one starts after every EOS."""
    after_eos = (tokens == eos_id).to(torch.int32)
    return torch.cumsum(after_eos, dim=-1) - after_eos
