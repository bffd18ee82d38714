"""Pictures of a run: the training curves and the confusion matrix (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import torch  # noqa: E402

from vimtune.engine.checkpoint import atomic_write  # noqa: E402

MAX_LABELLED_CLASSES = 40
MAX_ANNOTATED_CLASSES = 15


def save_confusion_png(confusion: torch.Tensor, classes: list[str], path: str | Path, title: str = "") -> None:
    """Write the (C, C) count matrix (rows: true class, columns: predicted) as a PNG.

    Cells are coloured by the row-normalised rate; counts are written in the cells for up to
    15 classes and class names label the axes for up to 40.
    """
    counts = confusion.to(torch.float64)
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(classes)
    size = min(4 + 0.35 * n, 24)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(n), labels=classes, rotation=90)
        ax.set_yticks(range(n), labels=classes)
    if n <= MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(counts[i, j]), ha="center", va="center",
                        color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: (panel title, y label, [(record key, line label)]) of the curves figure, left to right.
CURVE_PANELS = (
    ("loss", "cross-entropy", [("train_loss", "train"), ("val_loss", "val"), ("test_loss", "test")]),
    ("top-1 accuracy", "%", [("train_top1", "train"), ("val_top1", "val"), ("test_top1", "test")]),
    ("learning rate", "lr", [("lr", "at the end of the epoch")]),
)


def save_curves_png(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Write loss, top-1 accuracy and learning rate against epoch, from ``metrics.jsonl`` records, as a PNG.

    A line is drawn for every key the records hold (``train_top1`` is absent under Mixup, ``test_*`` without
    ``train.test_every_epoch``).

    Raises:
        ValueError: no records.
    """
    if not history:
        raise ValueError("no epochs to plot: the history is empty")
    epochs = [record["epoch"] for record in history]
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(12, 3.4))
    for ax, (panel, ylabel, lines) in zip(axes, CURVE_PANELS, strict=True):
        for key, label in lines:
            points = [(e, r[key]) for e, r in zip(epochs, history, strict=True) if key in r]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=label)
        ax.set_title(panel)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))  # the previous picture stays whole
    plt.close(fig)
    return path
