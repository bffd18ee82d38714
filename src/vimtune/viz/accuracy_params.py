"""Accuracy against trainable parameters (log scale), one labelled point per method, as in PEFT papers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def labels_below(coords: Sequence[tuple[float, float]], decades: float = 0.2, points: float = 4.0) -> list[bool]:
    """For each (parameters, accuracy %) point, whether its label goes below it rather than above.

    A label goes below when a nearby point (less than ``decades`` apart on the log axis) is at most
    ``points`` higher, whose label, above it, would otherwise cover this one.
    """
    return [any(j != i and abs(math.log10(x2 / x)) < decades and 0 < y2 - y <= points
                for j, (x2, y2) in enumerate(coords)) for i, (x, y) in enumerate(coords)]


def plot_accuracy_vs_params(
    points: Sequence[tuple[str, float, float]],
    path: str | Path,
    title: str = "",
    per_task: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    reference: Sequence[tuple[str, float, float]] = (),
    legend: tuple[str, str] = ("", ""),
) -> Path:
    """Write a scatter of accuracy (%) against trainable parameters (log x) to ``path`` (PNG).

    Args:
        points: ``(label, trainable parameters, accuracy in [0, 1])``, one big labelled marker each.
        path: the PNG to write.
        title: the figure title.
        per_task: optional ``{task: [(parameters, accuracy), ...]}`` drawn as small faint markers
            behind, one colour per task.
        reference: optional ``(label, parameters, accuracy)`` of the same methods under another
            protocol, drawn as hollow markers joined to the method's point by a grey line.
        legend: the names of ``points`` and ``reference`` in the legend (when ``reference`` is given).

    Returns:
        ``path``.
    """
    if not points:
        raise ValueError("nothing to plot: no (label, parameters, accuracy) points")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for task, task_points in (per_task or {}).items():
        xs, ys = zip(*task_points, strict=True)
        ax.scatter(xs, [100 * y for y in ys], s=14, alpha=0.35, label=task)
    ours = {label: (params, accuracy) for label, params, accuracy in points}
    for n, (label, params, accuracy) in enumerate(reference):
        ax.scatter(params, 100 * accuracy, s=60, facecolors="none", edgecolors="dimgray", zorder=3,
                   label=legend[1] if n == 0 else None)
        if label in ours:
            ax.plot([params, ours[label][0]], [100 * accuracy, 100 * ours[label][1]], color="gray", lw=0.8, zorder=2)
    below = labels_below([(params, 100 * accuracy) for _, params, accuracy in points])
    for n, ((label, params, accuracy), down) in enumerate(zip(points, below, strict=True)):
        ax.scatter(params, 100 * accuracy, s=60, color="black", zorder=3,
                   label=legend[0] if reference and n == 0 else None)
        ax.annotate(label, (params, 100 * accuracy), textcoords="offset points", xytext=(5, -11 if down else 4),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if per_task or reference:
        ax.legend(fontsize=7, loc="lower right", title="per task" if per_task else None, title_fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
