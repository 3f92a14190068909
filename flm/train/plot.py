"""Loss curves of one or more runs: training and validation loss against tokens and against FLOPs, with
the growth points marked."""

from __future__ import annotations

from pathlib import Path

from flm.errors import FlmError
from flm.train.metrics import read_metrics


def _growth_points(rows: list[dict], key: str) -> list[float]:
    points, last = [], None
    for r in rows:
        stage = r.get("stage", 0)
        if last is not None and stage != last:
            points.append(r[key])
        last = stage
    return points


def plot_runs(run_dirs: list[Path], out: Path, smooth: int = 5) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise FlmError(f"--out {out}: the plot is a PNG; give a path ending in .png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for d in run_dirs:
        rows = read_metrics(Path(d) / "metrics.jsonl")
        if not rows:
            raise FlmError(f"{d}: no metrics.jsonl with data; pass run folders written by flm train / flm run")
        runs.append((Path(d).name, rows))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for col, key, label in ((0, "tokens", "tokens"), (1, "flops", "training FLOPs")):
        train_title = f"training loss (mean of the last {smooth} logs)" if smooth > 1 else "training loss"
        for row, (what, title) in enumerate((("loss", train_title), ("val_loss", "validation loss"))):
            ax = axes[row][col]
            for i, (name, rows) in enumerate(runs):
                pts = [(r[key], r[what]) for r in rows if what in r]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                if what == "loss" and smooth > 1 and len(ys) > smooth:
                    ys = [sum(ys[max(0, j - smooth + 1): j + 1]) / len(ys[max(0, j - smooth + 1): j + 1])
                          for j in range(len(ys))]
                color = f"C{i}"
                ax.plot(xs, ys, color=color, label=name, marker="o" if what == "val_loss" else None, ms=3)
                for g in _growth_points(rows, key):
                    ax.axvline(g, color=color, ls="--", lw=0.8, alpha=0.6)
            ax.set_xlabel(label)
            ax.set_ylabel(title)
            ax.set_title(f"{title} vs {label}" + (" (dashed: growth)" if row == 0 and col == 0 else ""))
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
