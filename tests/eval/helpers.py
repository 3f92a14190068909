"""Small models and tokenizers for the evaluation tests: no downloads, built in milliseconds."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from flm.config import ModelConfig
from flm.eval.scorer import Scorer
from flm.model import FLM


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, EOS = 256: the flm Tokenizer interface, without training."""

    vocab_size = 257
    eos_id = 256
    bos_id = None
    pad_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def save(self, folder) -> None:  # pragma: no cover - not needed by these tests
        pass


def tiny_flm(max_seq_len: int = 64, seed: int = 0, **kw) -> FLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=257, d_model=32, n_layers=2, n_heads=2, max_seq_len=max_seq_len, **kw)
    model = FLM(cfg).eval()
    # random init gives near-uniform outputs; scale the embedding so scores differ visibly between tokens
    with torch.no_grad():
        model.tok_emb.weight.mul_(20.0)
    return model


class ByteScorer(Scorer):
    """A scorer over byte tokens whose logits a subclass computes from the decoded rows."""

    max_length = 100_000

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def prefix_id(self) -> int:
        return 256

    @property
    def eos_id(self) -> int | None:
        return 256

    def next_logits(self, ids: list[int]) -> Tensor:
        return self.logits(torch.tensor([ids]))[0, -1]

    def _greedy_batch(self, prompts, max_new, done):
        # only the next token's logits at each step (the tests' models are not transformers)
        out = []
        for i, prompt in enumerate(prompts):
            ids: list[int] = []
            for _ in range(max_new[i]):
                ids.append(int(self.next_logits(prompt + ids)[: self.vocab_size].argmax()))
                if done(i, ids):
                    break
            out.append(ids)
        return out


class RandomScorer(ByteScorer):
    """Emits random bytes: its logits are noise seeded by the row's prefix, so it is deterministic."""

    def logits(self, tokens: Tensor) -> Tensor:
        rows, length = tokens.shape
        out = torch.empty((rows, length, 257))
        for r in range(rows):
            seed = int.from_bytes(hashlib.sha256(bytes(tokens[r].clamp(max=255).tolist())).digest()[:8], "little")
            out[r] = torch.randn((length, 257), generator=torch.Generator().manual_seed(seed)) * 3.0
        return out

    def next_logits(self, ids: list[int]) -> Tensor:
        seed = int.from_bytes(hashlib.sha256(bytes(min(i, 255) for i in ids)).digest()[:8], "little")
        return torch.randn(257, generator=torch.Generator().manual_seed(seed)) * 3.0


class OracleScorer(ByteScorer):
    """Knows the answers: after a known prompt it puts all its mass on the next byte of ' answer' + newline.

    It works at the token level (logits), so the whole scoring path is exercised: prompt encoding,
    continuation splitting, greedy decoding with stop strings, answer normalization.
    """

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.prompts = sorted(answers, key=len, reverse=True)

    def _target(self, text: str) -> tuple[int, str] | None:
        for p in self.prompts:
            if text.startswith(p):
                return len(p.encode()), " " + self.answers[p].lstrip() + "\n"
        return None

    def logits(self, tokens: Tensor) -> Tensor:
        rows, length = tokens.shape
        out = torch.zeros((rows, length, 257))
        for r in range(rows):
            ids = tokens[r].tolist()
            found = self._target(self.decode(ids))
            if found is None:
                continue
            start, target = found
            tb = target.encode()
            for t in range(max(0, start - 1), length):
                produced = bytes(i for i in ids[start : t + 1] if i < 256)
                nxt = tb[len(produced)] if tb.startswith(produced) and len(produced) < len(tb) else ord("\n")
                out[r, t, nxt] = 50.0
        return out

    def next_logits(self, ids: list[int]) -> Tensor:
        out = torch.zeros(257)
        found = self._target(self.decode(ids))
        if found is not None:
            start, target = found
            produced, tb = bytes(i for i in ids[start:] if i < 256), target.encode()
            out[tb[len(produced)] if tb.startswith(produced) and len(produced) < len(tb) else ord("\n")] = 50.0
        return out
