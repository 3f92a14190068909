"""``flm eval ppl``: loss, perplexity and bits per byte of a model on held-out text.

Each document is scored on its own, conditioned on the prefix token (BOS, else EOS), in windows of the
model's context that predict every token once (``rolling_windows``; the same scheme as
lm-evaluation-harness's ``loglikelihood_rolling``, so the two agree). ``overlap`` tokens of each window's
predecessor may be repeated as extra context.

- loss: mean negative log-likelihood per predicted token, in nats;
- ppl: exp(loss);
- bits per byte: total NLL in bits over the UTF-8 bytes of the text, comparable across tokenizers.
"""

from __future__ import annotations

import glob
import gzip
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from flm.errors import FlmError
from flm.eval.scorer import Scorer, TokenPair, rolling_windows
from flm.progress import progress_bar


@dataclass
class PplResult:
    docs: int
    tokens: int
    bytes: int
    nll: float  # total, nats
    loss: float
    ppl: float
    bits_per_byte: float
    max_length: int
    overlap: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def data_files(patterns: Sequence[str]) -> list[Path]:
    """Files matching the given paths or globs (.txt, .jsonl, .jsonl.gz, .txt.gz), or one FlmError line."""
    files: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(str(Path(pat).expanduser()), recursive=True))
        if not hits:
            raise FlmError(f"--data {pat}: no such file (give .txt, .jsonl or .jsonl.gz files or a glob)")
        for h in hits:
            p = Path(h)
            if p.is_dir():
                raise FlmError(f"--data {p} is a folder; give files or a glob such as {p}/*.jsonl.gz")
            if not p.name.endswith((".txt", ".jsonl", ".jsonl.gz", ".txt.gz")):
                raise FlmError(f"--data {p}: unsupported file type; use .txt, .txt.gz, .jsonl or .jsonl.gz")
            files.append(p)
    return files


def read_documents(files: Sequence[Path], text_field: str = "text") -> Iterator[str]:
    """One document per .txt file, one per line (its ``text_field``) of a .jsonl file."""
    for p in files:
        opener = gzip.open if p.name.endswith(".gz") else open
        try:
            with opener(p, "rt", encoding="utf-8") as f:
                if ".jsonl" not in p.name:
                    yield f.read()
                    continue
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        doc = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise FlmError(f"{p}:{n}: not valid JSON ({e.msg})") from None
                    if not isinstance(doc, dict) or not isinstance(doc.get(text_field), str):
                        raise FlmError(f"{p}:{n}: no string field {text_field!r}; set --text-field")
                    yield doc[text_field]
        except (OSError, UnicodeDecodeError, EOFError) as e:
            raise FlmError(f"{p}: cannot read ({e})") from None


def perplexity(
    scorer: Scorer,
    docs: Iterator[str] | Sequence[str],
    *,
    overlap: int = 0,
    max_docs: int | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
) -> PplResult:
    """Score documents (see the module docstring). ``max_tokens`` cuts the last document short."""
    if not 0 <= overlap < scorer.max_length:
        raise FlmError(f"--overlap {overlap} must be in [0, {scorer.max_length - 1}] (the model's context - 1)")
    t0 = time.perf_counter()
    windows: list[TokenPair] = []
    n_docs = n_tokens = n_bytes = 0
    for text in docs:
        if max_docs is not None and n_docs >= max_docs:
            break
        if max_tokens is not None and n_tokens >= max_tokens:
            break
        tokens = scorer.encode(text)
        if not tokens:
            continue
        if max_tokens is not None and n_tokens + len(tokens) > max_tokens:
            tokens = tokens[: max_tokens - n_tokens]
            text = scorer.decode(tokens)
        windows += rolling_windows(tokens, scorer.prefix_id, scorer.max_length, overlap + 1)
        n_docs += 1
        n_tokens += len(tokens)
        n_bytes += len(text.encode("utf-8"))
    if not n_tokens:
        raise FlmError("no text to score: the data holds no non-empty documents")
    with progress_bar("ppl", len(windows), enabled=progress) as bar:
        nll = -sum(lp for lp, _ in scorer.loglikelihood_tokens(windows, bar.advance))
    loss = nll / n_tokens
    return PplResult(
        docs=n_docs,
        tokens=n_tokens,
        bytes=n_bytes,
        nll=nll,
        loss=loss,
        ppl=math.exp(min(loss, 700.0)),
        bits_per_byte=nll / math.log(2) / n_bytes,
        max_length=scorer.max_length,
        overlap=overlap,
        seconds=time.perf_counter() - t0,
    )
