"""What a run directory holds besides checkpoints, read and drawn without torch: the metrics
`train` logs (one JSON line per step or evaluation), the loss plot, the saved samples.

`train` writes them; `nonllama train`'s summary, `nonllama report` and the plot read them.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss.png"
SAMPLES_NAME = "samples.json"  # written by `nonllama generate --save` (make all does)


def read_metrics(run: Path) -> list[dict]:
    """Every record of `<run>/metrics.jsonl` in order ([] when the run has logged nothing)."""
    path = Path(run) / METRICS_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def last_metrics(records: list[dict], speed: bool = True) -> list[tuple[str, str]]:
    """(metric, value) of the last train step and the last evaluation, formatted for a table;
    `speed`: with the last step's tokens/s (which differs between identical runs)."""
    rows: list[tuple[str, str]] = []
    train = next((r for r in reversed(records) if r["split"] == "train"), None)
    val = next((r for r in reversed(records) if r["split"] == "val"), None)
    if train:
        rows += [("step", f"{train['step']:,}"), ("tokens", f"{train['tokens']:,}"),
                 ("train loss", f"{train['loss']:.4f}"), ("skipped steps", f"{train.get('skipped', 0):,}")]
        if speed:
            rows.append(("tokens/s (last step)", f"{train['tokens_per_s']:,.0f}"))
            if "mfu" in train:
                rows.append(("MFU (last step)", f"{train['mfu']:.1%}"))
    if val:
        rows += [("val loss", f"{val['val_loss']:.4f}"), ("val perplexity", f"{val['val_ppl']:.2f}"),
                 ("val top-1 / top-5", f"{val['val_top1']:.1%} / {val['val_top5']:.1%}")]
    return rows


def speed_metrics(records: list[dict]) -> list[tuple[str, str]]:
    """(metric, value) of the training speed over the run: the median tokens/s and model FLOPs
    utilization of its steps (the median: a step that compiled or evaluated does not move it)."""
    train = [r for r in records if r["split"] == "train"]
    rows: list[tuple[str, str]] = []
    if train:
        rows.append(("tokens/s (median of steps)", f"{statistics.median(r['tokens_per_s'] for r in train):,.0f}"))
    mfu = [r["mfu"] for r in train if "mfu" in r]
    if mfu:
        rows.append(("MFU (median of steps)", f"{statistics.median(mfu):.1%}"))
    return rows


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_figure(records: list[dict]) -> Any:
    """Train and validation loss against tokens seen; below, in a smaller plot, the model FLOPs
    utilization of each step when the run logged it."""
    plt = pyplot()
    train = [(r["tokens"], r["loss"]) for r in records if r["split"] == "train"]
    val = [(r["tokens"], r["val_loss"]) for r in records if r["split"] == "val"]
    mfu = [(r["tokens"], 100 * r["mfu"]) for r in records if r["split"] == "train" and "mfu" in r]
    if mfu:
        fig, (ax, mfu_ax) = plt.subplots(2, 1, figsize=(7, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        mfu_ax.plot(*zip(*mfu, strict=True), linewidth=1, color="tab:green")
        mfu_ax.set_ylabel("MFU %")
        mfu_ax.set_ylim(bottom=0)
        mfu_ax.set_xlabel("tokens")
        mfu_ax.grid(alpha=0.3)
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.set_xlabel("tokens")
    if train:
        ax.plot(*zip(*train, strict=True), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val", markersize=3)
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_losses(run: Path) -> Path:
    """Draw `<run>/loss.png` from the run's metrics (written to a temporary name, then renamed)."""
    png_path = Path(run) / PLOT_NAME
    fig = loss_figure(read_metrics(run))
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    pyplot().close(fig)
    os.replace(tmp, png_path)
    return png_path
