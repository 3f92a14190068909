"""Validation of a stage: when it runs (``due``) and what it measures (the mean loss over a fixed set)."""

from __future__ import annotations

import torch

from flm.config import RunConfig
from flm.data.loader import Batch, TokenLoader
from flm.data.prepare import PreparedData
from flm.distributed.env import DistEnv
from flm.distributed.parallel_model import ParallelModel
from flm.errors import FlmError

VAL_ROWS = 16  # sequences per validation batch, whatever the training batch or world size


def _rank_rows(batch: Batch, rank: int, world: int) -> Batch:
    """This rank's rows of a validation batch. A rank beyond the batch's rows still runs one row (FSDP2
    needs every rank in every forward), with a zero loss mask, so it adds nothing."""
    if rank < batch[0].shape[0]:
        return tuple(t[rank::world] for t in batch)
    x, y, mk, *docs = (t[:1] for t in batch)
    return (x, y, torch.zeros_like(mk), *docs)


class Validation:
    """Mean loss over the first eval_batches x VAL_ROWS validation sequences: the same set in every stage
    and for any number of ranks, so losses before and after a growth compare like for like."""

    def __init__(self, prepared: PreparedData, cfg: RunConfig, env: DistEnv, eval_at_start: bool = False) -> None:
        self.prepared, self.cfg, self.env = prepared, cfg, env
        self.enabled = self.available(prepared, cfg, eval_at_start)
        self._rows: list[Batch] | None = None

    def due(self, step: int, final: bool, ramp_total: int) -> bool:
        """Whether the step just taken ends with a validation: every ``train.eval_every`` steps, at the end of
        the stage, and four times during a growth ramp (the loss bump a growth causes, flm.growth.bump)."""
        if not self.enabled:
            return False
        every = self.cfg.train.eval_every
        in_ramp = step <= ramp_total
        return bool(every) and step % every == 0 or final or in_ramp and step % max(1, ramp_total // 4) == 0

    @staticmethod
    def available(prepared: PreparedData, cfg: RunConfig, eval_at_start: bool) -> bool:
        """Whether the stage validates: a validation set that cannot be read fails now when validation was
        asked for; with eval_every = 0 and readable data, one validation loss at the end."""
        asked = bool(cfg.train.eval_every or eval_at_start)
        try:
            TokenLoader(prepared, "valid", seq_len=cfg.seq_len, batch_size=1)
        except FlmError:
            if asked:
                raise
            return False
        return True

    def __call__(self, model: ParallelModel) -> float:
        env = self.env
        if self._rows is None:  # every replica reads the whole fixed set and keeps rows r, r + dp, ...
            vl = TokenLoader(self.prepared, "valid", seq_len=self.cfg.seq_len, batch_size=VAL_ROWS, seed=0,
                             document_ids=self.cfg.data.document_mask)
            batches = vl.valid_batches(self.cfg.train.eval_batches)
            self._rows = [_rank_rows(b, env.dp_rank, env.dp_size) for b in batches]
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=env.device)
        for x, y, mk, *docs in self._rows:
            total[0] += model.eval_loss(x, y, mk, *docs)
            total[1] += mk.sum().double()
        model.train()
        env.sum_over_dp(total)
        return float(total[0] / total[1].clamp_min(1))
