"""The μP coordinate check (Tensor Programs V, Fig. 5): train the same model at several widths for a few
steps and record every layer's activation size; under μP the curves stay flat across widths."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flm.config import ModelConfig, RunConfig
from flm.data.loader import TokenLoader
from flm.data.prepare import prepare_data
from flm.data.tokenizer import check_vocab
from flm.errors import FlmError
from flm.io import atomic_write
from flm.model import FLM
from flm.mup import param_groups, with_width

Batches = Callable[[int], tuple[Tensor, Tensor]]


def _activation_points(model: nn.Module) -> dict[str, nn.Module]:
    """Modules whose output size a coordinate check records, keyed by a short layer name."""
    points: dict[str, nn.Module] = {"embed": model.tok_emb}  # type: ignore[dict-item]
    for i, block in model.blocks.items():  # type: ignore[union-attr]
        points[f"{i}.q"] = block.attn.q
        points[f"{i}.attn"] = block.attn
        points[f"{i}.mlp_up"] = block.mlp.up
        points[f"{i}.mlp"] = block.mlp
        points[f"{i}.out"] = block
    points["ln_f"] = model.ln_f  # type: ignore[assignment]
    return points


def _std_hook(into: dict[str, float], key: str) -> Callable[..., None]:
    def hook(_module: nn.Module, _inputs: Any, out: Tensor) -> None:
        into[key] = out.detach().float().std().item()

    return hook


@dataclass
class CoordRecord:
    parameterization: str  # "mup" or "sp"
    width: int
    step: int  # 0 = at init; t = after t optimizer steps
    layer: str
    std: float


def coord_check(
    cfg: ModelConfig,
    widths: Iterable[int],
    batches: Batches,
    *,
    steps: int = 3,
    lr: float = 1e-2,
    parameterizations: Iterable[str] = ("mup", "sp"),
    seed: int = 0,
    progress: Callable[[], None] | None = None,
) -> list[CoordRecord]:
    """Std of every recorded activation at steps 0..``steps`` of AdamW (μP groups, no weight decay,
    fp32) for each width, under μP and/or standard parameterization. ``batches(step)`` gives the
    (inputs, targets) of a step; use the same batches for every width."""
    records: list[CoordRecord] = []
    for par in parameterizations:
        for width in widths:
            mcfg = with_width(cfg, width, mup=par == "mup")
            torch.manual_seed(seed)
            model = FLM(mcfg)
            model.train()
            opt = torch.optim.AdamW(param_groups(model, lr, 0.0), lr=lr, betas=(0.9, 0.95))
            captured: dict[str, float] = {}
            hooks = [
                mod.register_forward_hook(_std_hook(captured, key))
                for key, mod in _activation_points(model).items()
            ]
            try:
                for step in range(steps + 1):
                    inputs, targets = batches(step)
                    captured.clear()
                    logits = model(inputs)
                    captured["logits"] = logits.detach().std().item()
                    for layer, std in captured.items():
                        records.append(CoordRecord(par, width, step, layer, std))
                    if step == steps:
                        break
                    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            finally:
                for h in hooks:
                    h.remove()
            if progress is not None:
                progress()
    return records


def width_ratios(records: list[CoordRecord], step: int, parameterization: str) -> dict[str, float]:
    """Per layer: activation std at the widest width / at the narrowest, at ``step``."""
    rows = [r for r in records if r.step == step and r.parameterization == parameterization]
    lo, hi = min(r.width for r in rows), max(r.width for r in rows)
    by = {(r.layer, r.width): r.std for r in rows}
    return {layer: by[(layer, hi)] / by[(layer, lo)] for layer, w in by if w == lo}


# ----- the experiment as `flm mup coord-check` runs it ---------------------------------------------------


def default_widths(head_dim: int) -> list[int]:
    """Four doublings from the smallest multiple of ``head_dim`` >= 64."""
    w0 = head_dim * math.ceil(64 / head_dim)
    return [w0 * 2**k for k in range(4)]


def check_setup(
    cfg: RunConfig, widths: list[int] | None, *, steps: int, batch_size: int, seq_len: int
) -> list[int]:
    """The widths to compare (sorted; default: ``default_widths``), after refusing a setup that cannot run."""
    if not cfg.model.mup_base_width:
        raise FlmError(
            "coord-check compares μP with SP and needs model.mup_base_width "
            "(e.g. --set model.mup_base_width=64)"
        )
    if steps < 1 or batch_size < 1 or seq_len < 2:
        raise FlmError("--steps and --batch-size must be >= 1 and --seq-len >= 2")
    if seq_len > cfg.model.max_seq_len:
        raise FlmError(f"--seq-len {seq_len} exceeds model.max_seq_len ({cfg.model.max_seq_len})")
    assert cfg.model.head_dim is not None
    chosen = sorted(widths or default_widths(cfg.model.head_dim))
    if len(chosen) < 2:
        raise FlmError("--widths: give at least two widths to compare")
    return chosen


def coord_batches(
    cfg: RunConfig, source: str, *, steps: int, batch_size: int, seq_len: int, seed: int = 0
) -> Batches:
    """The (inputs, targets) of steps 0..``steps``, the same for every width: from the config's prepared
    training data (``source`` "corpus", prepared first if needed) or uniform random tokens ("random")."""
    n, b, t = steps + 1, batch_size, seq_len
    if source == "random":
        gen = torch.Generator().manual_seed(seed)
        data = [torch.randint(0, cfg.model.vocab_size, (b, t + 1), generator=gen) for _ in range(n)]
        batches = [(x[:, :-1], x[:, 1:]) for x in data]
    else:
        prepared = prepare_data(cfg.data, progress=cfg.train.progress, model=cfg.model)
        check_vocab(prepared.tokenizer, cfg.model)
        loader = iter(TokenLoader(prepared, "train", seq_len=t, batch_size=b, seed=seed))
        batches = [next(loader)[:2] for _ in range(n)]
    return lambda step: batches[step]


@dataclass
class CoordSummary:
    """Per parameterization and layer: activation std at the widest width / at the narrowest, at the last
    step; and the verdict on μP."""

    ratios: dict[str, dict[str, float]]  # "mup" / "sp" -> layer -> ratio

    @property
    def worst_hidden(self) -> float:
        """The largest change (either way) of a hidden activation across widths under μP. Logits are left
        out: under μP they start near 0 (as 1/sqrt(width): the readout is zero-mean at init) and become
        width-independent only once training has moved the readout."""
        return max(max(r, 1 / r) for layer, r in self.ratios["mup"].items() if layer != "logits")

    @property
    def flat(self) -> bool:
        return self.worst_hidden < 2


def summarize(records: list[CoordRecord], step: int) -> CoordSummary:
    return CoordSummary({p: width_ratios(records, step, p) for p in ("mup", "sp")})


def save_coord_check(records: list[CoordRecord], out: Path, meta: dict[str, Any]) -> tuple[Path, Path]:
    """coord_check.json (``meta`` and every record) and coord_check.png (std vs width, one panel per
    parameterization and step, one line per layer)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "coord_check.json", out / "coord_check.png"
    atomic_write(json_path, json.dumps({**meta, "records": [asdict(r) for r in records]}, indent=1))
    _plot(records, png_path)
    return json_path, png_path


def _plot(records: list[CoordRecord], png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pars = [p for p in ("mup", "sp") if any(r.parameterization == p for r in records)]
    steps = sorted({r.step for r in records})
    layers = list(dict.fromkeys(r.layer for r in records))
    fig, axes = plt.subplots(
        len(pars), len(steps), figsize=(3.2 * len(steps), 3.0 * len(pars)), squeeze=False, sharey="row"
    )
    cmap = plt.get_cmap("tab20")
    for i, par in enumerate(pars):
        for j, step in enumerate(steps):
            ax = axes[i][j]
            for k, layer in enumerate(layers):
                key = (par, step, layer)
                pts = sorted(
                    (r.width, r.std) for r in records if (r.parameterization, r.step, r.layer) == key
                )
                ax.plot(*zip(*pts), marker=".", color=cmap(k % 20), label=layer, lw=1)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{'μP' if par == 'mup' else 'SP'}, step {step}", fontsize=9)
            ax.set_xlabel("width (d_model)", fontsize=8)
            if j == 0:
                ax.set_ylabel("activation std", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
