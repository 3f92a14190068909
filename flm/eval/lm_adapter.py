"""lm-evaluation-harness adapter: any model ``load_scorer`` accepts, as an lm-eval ``LM`` named ``flm``.

    python -m flm.eval.harness --model flm --model_args path=runs/demo --tasks hellaswag
    lm_eval --model flm --model_args path=runs/demo ...   # lm-eval versions that load the entry point

``model_args``: ``path`` (or ``pretrained``): an flm run/checkpoint folder, a Hugging Face folder, a .gguf
file or ``smollm2``; ``device`` (auto), ``dtype`` (auto = fp32), ``max_length`` (cap on the context),
``batch_tokens`` (rows x length per scoring batch), ``gen_batch`` (rows per generation batch). lm-eval's
``--batch_size`` is ignored: batches are sized by tokens.

The three request types go straight to the scorer, so lm-eval's numbers and flm's own (``flm eval ppl``,
the IQ suite) come from the same code: loglikelihood -> ``Scorer.loglikelihood``; loglikelihood_rolling ->
lm-eval's own rolling windows scored by ``Scorer.loglikelihood_tokens``; generate_until -> greedy
``Scorer.generate_until`` (sampling arguments are refused: the suite is greedy).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from flm.errors import FlmError
from flm.eval.models import load_scorer
from flm.eval.scorer import GenRequest, Scorer
from flm.progress import progress_bar

log = logging.getLogger(__name__)
DEFAULT_MAX_GEN_TOKS = 256


@register_model("flm")
class FlmLM(LM):
    """lm-eval ``LM`` over an flm ``Scorer``."""

    def __init__(
        self,
        path: str | None = None,
        pretrained: str | None = None,
        *,
        scorer: Scorer | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_length: int | None = None,
        batch_tokens: int = 8192,
        gen_batch: int = 16,
        trust_remote_code: bool = False,
        progress: bool = True,
        batch_size: Any = None,  # lm-eval passes these; batches here are sized by tokens
        max_batch_size: Any = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise FlmError(
                f"--model_args: unknown {', '.join(sorted(unknown))}; the flm model takes path, device, dtype, "
                "max_length, batch_tokens, gen_batch, trust_remote_code"
            )
        if scorer is None:
            spec = path or pretrained
            if not spec:
                raise FlmError("--model flm needs --model_args path=<run, checkpoint, HF folder, .gguf or smollm2>")
            if device and device.startswith("cuda") and not torch.cuda.is_available():
                # lm-eval's --device defaults to cuda: on a CPU machine that is no user request, so no warning
                log.info("device %s requested but CUDA is not available: using the CPU", device)
                device = "cpu"
            scorer = load_scorer(
                str(spec),
                device=device or "auto",
                dtype=dtype,
                max_length=max_length,
                batch_tokens=int(batch_tokens),
                gen_batch=int(gen_batch),
                trust_remote_code=str(trust_remote_code).lower() in ("1", "true", "yes"),
            )
        self.scorer = scorer
        self.progress = progress
        self._device = scorer.device

    @property
    def tokenizer_name(self) -> str:
        return f"flm:{self.scorer.name}"

    # ----- the three request types --------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args) for r in requests]
        with progress_bar("loglikelihood", len(pairs), enabled=self.progress and not disable_tqdm) as bar:
            results = self.scorer.loglikelihood(pairs, bar.advance)
        for pair, res in zip(pairs, results):
            self.cache_hook.add_partial("loglikelihood", pair, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        s = self.scorer
        windows, owner = [], []
        for n, r in enumerate(requests):
            (text,) = r.args
            for w in get_rolling_token_windows(s.encode(text), s.prefix_id, s.max_length, 1):
                windows.append(make_disjoint_window(w))
                owner.append(n)
        totals = [0.0] * len(requests)
        with progress_bar("loglikelihood_rolling", len(windows), enabled=self.progress and not disable_tqdm) as bar:
            for n, (lp, _) in zip(owner, s.loglikelihood_tokens(windows, bar.advance)):
                totals[n] += lp
        for r, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        reqs = []
        for r in requests:
            context, kwargs = r.args
            reqs.append(gen_request(context, dict(kwargs or {}), self.scorer))
        with progress_bar("generate_until", len(reqs), enabled=self.progress and not disable_tqdm) as bar:
            outs = self.scorer.generate_until(reqs, bar.advance)
        for r, out in zip(requests, outs):
            self.cache_hook.add_partial("generate_until", r.args, out)
        return outs


def gen_request(context: str, kwargs: dict[str, Any], scorer: Scorer) -> GenRequest:
    """lm-eval generation kwargs -> a greedy ``GenRequest``; sampling settings are refused."""
    until = kwargs.pop("until", None) or []
    if isinstance(until, str):
        until = [until]
    if scorer.eos_id is not None:
        eos_text = scorer.decode([scorer.eos_id])
        if eos_text and eos_text not in until:
            until = [*until, eos_text]
    max_new = int(kwargs.pop("max_gen_toks", kwargs.pop("max_new_tokens", DEFAULT_MAX_GEN_TOKS)))
    temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
    if kwargs.pop("do_sample", False) or temperature > 0:
        raise FlmError("the flm lm-eval model decodes greedily; run tasks with do_sample=false / temperature=0")
    if kwargs:
        log.debug("ignoring generation kwargs %s", sorted(kwargs))
    return GenRequest(context, list(until), max_new)
