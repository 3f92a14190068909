"""The scorer: the one small interface every evaluation in flm runs on.

A ``Scorer`` wraps a causal LM and its tokenizer (an flm checkpoint or a Hugging Face model, see
``flm.eval.models``) and answers three questions, in batches:

- ``loglikelihood``: log P(continuation | context), and whether greedy decoding would produce it;
- ``loglikelihood_rolling``: log P(text) of a whole document, in windows of the model's context;
- ``generate_until``: a greedy continuation, cut at the first stop string.

The lm-evaluation-harness adapter, ``flm eval ppl`` and the IQ suite all call these, so their numbers
agree by construction. Subclasses supply tokenization, ``logits`` (a forward pass over right-padded
token rows) and, for speed, ``_greedy_batch`` (decoding with a KV cache).

Conventions (the same as lm-evaluation-harness's HFLM, so scores are comparable):
- a context and continuation are encoded together and split, with trailing spaces of the context moved
  into the continuation; an empty context is replaced by the prefix token (BOS, else EOS);
- inputs longer than the model's context are cut from the left;
- log-probabilities are taken over all the model's outputs; greedy choices (``is_greedy``, generation)
  only over the tokenizer's real vocabulary (the model's output may be padded).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

TokenPair = tuple[list[int], list[int]]


@dataclass
class GenRequest:
    """Greedy generation from ``context`` until a stop string, EOS, or ``max_new_tokens``."""

    context: str
    until: list[str] = field(default_factory=lambda: ["\n"])
    max_new_tokens: int = 64


def rolling_windows(tokens: list[int], prefix: int, max_len: int, context_len: int = 1) -> list[TokenPair]:
    """Split a document into (context, targets) windows that predict every token exactly once.

    The first window is conditioned on ``prefix``; each later one sees up to ``max_len`` earlier tokens,
    of which ``context_len - 1`` overlap the previous window's targets (1 = disjoint windows). The last
    window is given a full context. This is lm-evaluation-harness's ``get_rolling_token_windows`` followed
    by ``make_disjoint_window``, written out here so flm's perplexity does not depend on lm-eval.
    """
    if not 1 <= context_len <= max_len:
        raise ValueError(f"context_len must be in [1, {max_len}], got {context_len}")
    if not tokens:
        return []
    out: list[TokenPair] = []
    first = min(max_len, len(tokens))
    out.append(([prefix], tokens[:first]))
    done = first
    pred_len = max_len - context_len + 1
    while done < len(tokens):
        n = min(len(tokens) - done, pred_len)
        end = done + n
        inp = tokens[max(0, end - max_len - 1) : end - 1]
        out.append((inp[: len(inp) - (n - 1)], tokens[end - n : end]))
        done = end
    return out


class Scorer(abc.ABC):
    """A causal LM with its tokenizer, scored in batches. See the module docstring."""

    #: what the model is (a path or name), for reports
    name: str = "model"
    #: the file or folder it was loaded from
    source: str = ""
    #: the longest token sequence the model reads
    max_length: int = 2048
    #: tokens per forward batch (rows x padded length); bounds memory of the logits
    batch_tokens: int = 8192
    #: rows per generation batch
    gen_batch: int = 16
    device: torch.device = torch.device("cpu")

    # ----- what a subclass provides ------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, with no special tokens added."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Real vocabulary of the tokenizer (the model's output may be larger: padded)."""

    @property
    @abc.abstractmethod
    def prefix_id(self) -> int:
        """The token a document or an empty context is conditioned on (BOS, else EOS)."""

    @property
    def eos_id(self) -> int | None:
        return None

    @abc.abstractmethod
    def logits(self, tokens: Tensor) -> Tensor:
        """(rows, length) int64 right-padded tokens -> (rows, length, vocab) float32 logits."""

    def _greedy_batch(self, prompts: list[list[int]], max_new: list[int], done: Callable[[int, list[int]], bool]):
        """Greedy continuations of ``prompts``: row i gets at most ``max_new[i]`` tokens (its prompt fits
        ``max_length - max_new[i]``) and stops early once ``done(i, ids)``. Reference implementation: the
        whole prefix again at every step, one row at a time; subclasses override it with a KV cache."""
        out: list[list[int]] = []
        for i, prompt in enumerate(prompts):
            ids: list[int] = []
            for _ in range(max_new[i]):
                row = torch.tensor([prompt + ids], dtype=torch.long, device=self.device)
                ids.append(int(self.logits(row)[0, -1, : self.vocab_size].argmax()))
                if done(i, ids):
                    break
            out.append(ids)
        return out

    # ----- scoring ------------------------------------------------------------------------------------
    def encode_pair(self, context: str, continuation: str) -> TokenPair:
        """Token ids of (context, continuation), split the way lm-evaluation-harness splits them."""
        if not context:
            cont = self.encode(continuation)
            if cont and cont[0] == self.prefix_id:
                return cont[:1], cont[1:]
            return [self.prefix_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx) :]

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], progress: Callable[[int], None] | None = None):
        """[(log P(cont | ctx), is_greedy)] for (context, continuation) strings."""
        return self.loglikelihood_tokens([self.encode_pair(c, x) for c, x in pairs], progress)

    @torch.no_grad()
    def loglikelihood_tokens(
        self, pairs: Sequence[TokenPair], progress: Callable[[int], None] | None = None
    ) -> list[tuple[float, bool]]:
        """[(sum of log-probs of the continuation tokens, all of them greedy)] for token-id pairs."""
        rows: list[tuple[list[int], list[int]]] = []  # (model input, continuation scored at its tail)
        for ctx, cont in pairs:
            if not cont:
                rows.append(([], []))
                continue
            ctx = ctx or [self.prefix_id]
            cont = cont[-self.max_length :]
            whole = (ctx + cont)[-(self.max_length + 1) :]
            rows.append((whole[:-1], cont))
        results: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
        order = sorted((i for i, r in enumerate(rows) if r[1]), key=lambda i: -len(rows[i][0]))
        for batch in _batches(order, lambda i: len(rows[i][0]), self.batch_tokens):
            width = len(rows[batch[0]][0])
            tokens = torch.zeros((len(batch), width), dtype=torch.long)
            for j, i in enumerate(batch):
                inp = rows[i][0]
                tokens[j, : len(inp)] = torch.tensor(inp)
            logits = self.logits(tokens.to(self.device))
            for j, i in enumerate(batch):
                inp, cont = rows[i]
                lg = logits[j, len(inp) - len(cont) : len(inp)].float()
                target = torch.tensor(cont, device=lg.device)
                lp = F.log_softmax(lg, dim=-1).gather(-1, target[:, None]).sum()
                greedy = bool((lg[:, : self.vocab_size].argmax(-1) == target).all())
                results[i] = (float(lp), greedy)
            if progress:
                progress(len(batch))
        return results

    def loglikelihood_rolling(self, texts: Sequence[str], context_len: int = 1) -> list[float]:
        """log P(text) of each document, conditioned on the prefix token, in windows of ``max_length``."""
        windows: list[TokenPair] = []
        owner: list[int] = []
        for d, text in enumerate(texts):
            for w in rolling_windows(self.encode(text), self.prefix_id, self.max_length, context_len):
                windows.append(w)
                owner.append(d)
        totals = [0.0] * len(texts)
        for d, (lp, _) in zip(owner, self.loglikelihood_tokens(windows)):
            totals[d] += lp
        return totals

    # ----- generation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(
        self, requests: Sequence[GenRequest], progress: Callable[[int], None] | None = None
    ) -> list[str]:
        """Greedy continuations, each cut before its first stop string (and at EOS)."""
        out: list[str] = [""] * len(requests)
        budget = [max(1, min(r.max_new_tokens, self.max_length - 1)) for r in requests]
        prompts = [self._prompt_ids(r.context, n) for r, n in zip(requests, budget)]
        order = sorted(range(len(requests)), key=lambda i: -len(prompts[i]))  # similar lengths batch together
        for start in range(0, len(order), self.gen_batch):
            batch = order[start : start + self.gen_batch]

            def done(j: int, ids: list[int], batch=batch) -> bool:
                if self.eos_id is not None and ids and ids[-1] == self.eos_id:
                    return True
                text = self.decode(ids)
                return any(s and s in text for s in requests[batch[j]].until)

            gens = self._greedy_batch([prompts[i] for i in batch], [budget[i] for i in batch], done)
            for i, ids in zip(batch, gens):
                out[i] = self._cut(ids, requests[i].until)
            if progress:
                progress(len(batch))
        return out

    def _prompt_ids(self, context: str, max_new: int) -> list[int]:
        ids = self.encode(context) if context else []
        ids = ids or [self.prefix_id]
        return ids[-max(1, self.max_length - max_new) :]

    def _cut(self, ids: list[int], until: Iterable[str]) -> str:
        if self.eos_id is not None and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        text = self.decode(ids)
        for s in until:
            if s and s in text:
                text = text[: text.index(s)]
        return text


def _batches(order: list[int], length: Callable[[int], int], budget: int) -> Iterable[list[int]]:
    """Consecutive groups of ``order`` (sorted longest first) whose rows x longest length fit ``budget``."""
    batch: list[int] = []
    for i in order:
        width = length(batch[0]) if batch else length(i)
        if batch and (len(batch) + 1) * width > budget:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
