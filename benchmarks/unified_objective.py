"""The ablation FLM-101B does not publish: the same small model on the same token budget, four ways.

Arms (each for every seed):
- ``lm``: language modelling only (the bundled corpus);
- ``unified``: teacher-signal samples mixed into every batch, the loss on the label token (FLM-101B);
- ``alternating``: FreeLM's schedule: language-modelling batches and teacher batches in turn, the teacher
  batches as often as the unified arm's teacher share;
- ``cls_head``: FreeLM's original readout: a separate binary classification head on the hidden state of the
  proposition's last token (true/false), mixed into every batch like ``unified``; no label tokens.

Reported per arm (mean over seeds, and per seed): validation LM loss on pd-english; item accuracy on held-out
items of the trained tasks and on tasks never trained on (transfer), each next to its chance level; the standard
deviation of the training loss over the second half of training; the count of loss spikes (a step whose loss
is above 1.5x the mean of the 20 steps before it); tokens/s. Writes benchmarks/results/unified_objective.json
and unified_objective.png.

    python benchmarks/unified_objective.py                   # the full run (4 arms x 2 seeds)
    python benchmarks/unified_objective.py --steps 4 --eval-items 8 --seeds 0 --out /tmp/uo   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flm.config import DataConfig, DataSource, ModelConfig, TokenizerConfig
from flm.data.loader import TokenLoader
from flm.data.prepare import PreparedData, prepare_data
from flm.data.teacher import TeacherItem, TeacherSource, resolve_labels
from flm.eval.models import FlmScorer
from flm.eval.teacher import margins, score_items
from flm.io import atomic_write
from flm.model import FLM
from flm.mup import param_groups
from flm.train.schedule import CosineSchedule

RESULTS = Path(__file__).resolve().parent / "results"
TRAINED = ["word_in_paragraph", "next_sentence", "sst2", "mrpc", "rte", "copa", "boolq"]
TRANSFER = ["piqa", "arc_easy", "sciq", "winogrande", "commonsense_qa"]
ARMS = ["lm", "unified", "alternating", "cls_head"]
CORPUS = "data/pd-english/train.jsonl.gz"


def _data(weights: tuple[float, float] | None, prepared_dir: str) -> DataConfig:
    """The corpus alone (weights None), or the corpus and the trained tasks' teacher samples."""
    train = [DataSource(path=CORPUS)]
    if weights is not None:
        train = [DataSource(path=CORPUS, weight=weights[0]),
                 DataSource(kind="teacher", tasks=TRAINED, weight=weights[1])]
    return DataConfig(train=train, valid=[DataSource(path="data/pd-english/valid.jsonl.gz")],
                      tokenizer=TokenizerConfig(kind="bpe", vocab_size=4096), prepared_dir=prepared_dir)


class Arm:
    """Batches and loss of one arm; ``head`` is the cls_head arm's classifier."""

    def __init__(self, name: str, loaders: dict[str, TokenLoader], share: float, ids: tuple[int, int], d: int) -> None:
        self.name, self.loaders, self.ids = name, loaders, ids
        self.every = max(1, round(1 / share))  # alternating: one teacher batch in `every`
        self.head = nn.Linear(d, 2) if name == "cls_head" else None

    def batch(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        if self.name == "lm":
            return next(self.loaders["lm"])
        if self.name == "alternating":
            return next(self.loaders["teacher" if step % self.every == self.every - 1 else "lm"])
        return next(self.loaders["mixed"])

    def loss(self, model: FLM, x: Tensor, y: Tensor, mask: Tensor, hidden: list[Tensor]) -> Tensor:
        if self.head is None:
            return model(x, targets=y, loss_weights=mask / mask.sum().clamp_min(1))
        is_label = mask.bool() & ((y == self.ids[0]) | (y == self.ids[1]))
        lm_mask = mask * (~is_label)
        count = mask.sum().clamp_min(1)
        lm = model(x, targets=y, loss_weights=lm_mask / count)
        rows, cols = is_label.nonzero(as_tuple=True)
        if len(rows) == 0:
            return lm
        logits = self.head(hidden[0][rows, cols])
        return lm + F.cross_entropy(logits, (y[rows, cols] == self.ids[0]).long(), reduction="sum") / count


def _spikes(losses: list[float], window: int = 20) -> int:
    return sum(losses[i] > 1.5 * float(np.mean(losses[i - window : i])) for i in range(window, len(losses)))


@torch.no_grad()
def _val_loss(model: FLM, valid: TokenLoader, batches: int) -> float:
    model.eval()
    total = sum(float(model(x, targets=y, loss_weights=m / m.sum())) for x, y, m in valid.valid_batches(batches))
    model.train()
    return total / batches


@torch.no_grad()
def _accuracy(arm: Arm, model: FLM, scorer: FlmScorer, items: dict[str, list[TeacherItem]],
              ids: tuple[int, int], hidden: list[Tensor]) -> dict[str, dict[str, float]]:
    """Item accuracy per task: label-token margins, or the cls_head arm's head margins."""
    model.eval()
    if arm.head is not None:  # the head's two logits stand in for the two label tokens: 1 = true, 0 = false
        scorer, ids = HeadScorer(model, scorer.tok, arm.head, hidden), (1, 0)
    out = {}
    for task, its in items.items():
        m = margins(scorer, [p for it in its for p in it.propositions], ids[0], ids[1], progress=False)
        out[task] = score_items(its, m) | {"n": len(its)}
    model.train()
    return out


class HeadScorer(FlmScorer):
    """The cls_head arm read out: per position, the classification head's (false, true) logits."""

    def __init__(self, model: FLM, tok: Any, head: nn.Linear, hidden: list[Tensor]) -> None:
        super().__init__(model, tok)
        self.head, self.hidden = head, hidden

    def logits(self, tokens: Tensor) -> Tensor:
        self.model(tokens)
        return self.head(self.hidden[0]).float()


def _mean_acc(acc: dict[str, dict[str, float]]) -> tuple[float, float]:
    return (float(np.mean([a["accuracy"] for a in acc.values()])), float(np.mean([a["chance"] for a in acc.values()])))


def run_arm(name: str, seed: int, args: argparse.Namespace, data: dict[str, PreparedData],
            eval_items: dict[str, dict[str, list[TeacherItem]]]) -> dict[str, Any]:
    """Train one arm for ``args.steps`` steps and evaluate it."""
    torch.manual_seed(seed)
    tok = data["lm"].tokenizer
    cfg = ModelConfig(vocab_size=4096, d_model=args.d_model, n_layers=args.layers, n_heads=args.d_model // 32,
                      max_seq_len=args.seq_len)
    model = FLM(cfg)
    ids = resolve_labels(("label_pos", "label_neg"), tok, "benchmark")[1]
    loaders = {k: TokenLoader(p, "train", seq_len=args.seq_len, batch_size=args.batch, seed=seed)
               for k, p in data.items()}
    arm = Arm(name, loaders, args.share, ids, cfg.d_model)
    hidden: list[Tensor] = [torch.empty(0)]
    model.ln_f.register_forward_hook(lambda _m, _i, out: hidden.__setitem__(0, out))
    params = param_groups(model, args.lr, 0.1) + ([{"params": list(arm.head.parameters()), "lr_scale": 1.0}]
                                                  if arm.head else [])
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    schedule = CosineSchedule(args.lr, args.lr / 10, max(1, args.steps // 10), args.steps)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = schedule(step) * g.get("lr_scale", 1.0)
        x, y, mask = arm.batch(step)
        loss = arm.loss(model, x, y, mask, hidden)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - t0
    valid = TokenLoader(data["lm"], "valid", seq_len=args.seq_len, batch_size=args.batch)
    scorer = FlmScorer(model, tok, batch_tokens=8192)
    trained = _accuracy(arm, model, scorer, eval_items["trained"], ids, hidden)
    transfer = _accuracy(arm, model, scorer, eval_items["transfer"], ids, hidden)
    half = losses[len(losses) // 2 :]
    return {
        "arm": name, "seed": seed, "val_loss": _val_loss(model, valid, args.val_batches),
        "trained": trained, "transfer": transfer,
        "trained_acc": _mean_acc(trained)[0], "trained_chance": _mean_acc(trained)[1],
        "transfer_acc": _mean_acc(transfer)[0], "transfer_chance": _mean_acc(transfer)[1],
        "loss_std_second_half": float(np.std(half)), "loss_spikes": _spikes(losses),
        "tokens_per_s": args.steps * args.batch * args.seq_len / seconds, "train_seconds": seconds,
        "losses": losses,
    }


def _eval_items(limit: int) -> dict[str, dict[str, list[TeacherItem]]]:
    """Held-out items of the trained tasks; items of the transfer tasks (never trained on: all held-out ones)."""
    out = {}
    for group, tasks in (("trained", TRAINED), ("transfer", TRANSFER)):
        src = TeacherSource(DataSource(kind="teacher", tasks=tasks), f"benchmark {group}", "heldout")
        out[group] = {t: its[:limit] for t, its in src.items().items()}
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = ["val_loss", "trained_acc", "trained_chance", "transfer_acc", "transfer_chance", "loss_std_second_half",
            "loss_spikes", "tokens_per_s"]
    out = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if mine:
            out[arm] = {k: float(np.mean([r[k] for r in mine])) for k in keys}
            out[arm] |= {k + "_sd": float(np.std([r[k] for r in mine])) for k in ("val_loss", "trained_acc",
                                                                                   "transfer_acc")}
    return out


def plot(runs: list[dict[str, Any]], summary: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in runs:
        k = max(1, len(r["losses"]) // 50)
        smooth = np.convolve(r["losses"], np.ones(k) / k, mode="valid")
        ax[0].plot(smooth, label=f"{r['arm']} s{r['seed']}", color=f"C{ARMS.index(r['arm'])}", alpha=0.8)
    ax[0].set(xlabel="step", ylabel="training loss (smoothed)", title="training loss")
    ax[0].legend(fontsize=7)
    arms = list(summary)
    ax[1].bar(arms, [summary[a]["val_loss"] for a in arms], yerr=[summary[a]["val_loss_sd"] for a in arms])
    ax[1].set(ylabel="validation LM loss (pd-english)", title="language modelling")
    ax[1].set_ylim(min(summary[a]["val_loss"] for a in arms) * 0.97, max(summary[a]["val_loss"] for a in arms) * 1.02)
    w = 0.38
    xs = np.arange(len(arms))
    ax[2].bar(xs - w / 2, [summary[a]["trained_acc"] for a in arms], w, label="trained tasks (held-out items)")
    ax[2].bar(xs + w / 2, [summary[a]["transfer_acc"] for a in arms], w, label="transfer tasks")
    ax[2].axhline(summary[arms[0]]["trained_chance"], ls="--", color="C0", lw=1, label="chance (trained)")
    ax[2].axhline(summary[arms[0]]["transfer_chance"], ls=":", color="C1", lw=1, label="chance (transfer)")
    ax[2].set_xticks(xs, arms)
    ax[2].set(ylabel="item accuracy", title="teacher-signal read-out")
    ax[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--share", type=float, default=0.25, help="teacher share of the rows (or of alternating batches)")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
    ap.add_argument("--arms", type=lambda s: s.split(","), default=ARMS)
    ap.add_argument("--eval-items", type=int, default=200, help="held-out items per task")
    ap.add_argument("--val-batches", type=int, default=16)
    ap.add_argument("--prepared-dir", default="data/prepared")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for unified_objective.json/.png")
    return ap.parse_args()


def _prepare(args: argparse.Namespace) -> dict[str, PreparedData]:
    data = {"lm": prepare_data(_data(None, args.prepared_dir), progress=False),
            "mixed": prepare_data(_data((1 - args.share, args.share), args.prepared_dir), progress=False),
            "teacher": prepare_data(_data((0.0, 1.0), args.prepared_dir), progress=False)}
    vocab = {k: p.tokenizer.backend.get_vocab() for k, p in data.items()}
    assert vocab["lm"] == vocab["mixed"] == vocab["teacher"], "teacher samples must not change the tokenizer"
    return data


def _each(args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    for seed in args.seeds:
        for arm in args.arms:
            yield arm, seed


def main(log: Callable[[str], None] = print) -> None:
    args = _args()
    t0 = time.perf_counter()
    data = _prepare(args)
    items = _eval_items(args.eval_items)
    runs = []
    for arm, seed in _each(args):
        r = run_arm(arm, seed, args, data, items)
        runs.append(r)
        log(f"{arm} seed {seed}: val {r['val_loss']:.4f}, trained acc {r['trained_acc']:.3f} "
            f"(chance {r['trained_chance']:.3f}), transfer {r['transfer_acc']:.3f}, {r['tokens_per_s']:.0f} tok/s")
    summary = summarize(runs)
    dropped = {k: TokenLoader(p, "train", seq_len=args.seq_len, batch_size=1).dropped for k, p in data.items()}
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "trained_tasks": TRAINED, "transfer_tasks": TRANSFER, "dropped_samples": dropped,
              "summary": summary, "runs": runs, "seconds": time.perf_counter() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "unified_objective.json", json.dumps(report, indent=1) + "\n")
    plot(runs, summary, args.out / "unified_objective.png")
    log(json.dumps({a: {k: round(v, 4) for k, v in s.items() if not math.isnan(v)} for a, s in summary.items()}))


if __name__ == "__main__":
    main()
