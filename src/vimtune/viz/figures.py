"""The pictures of ``vimtune viz``, drawn from plain arrays (matplotlib, Agg backend: no display needed).

Every function takes what :mod:`vimtune.viz.capture` collects, already reduced to per-layer, per-token arrays,
and writes one PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from vimtune.engine.checkpoint import atomic_write  # noqa: E402

DPI = 150


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight"))
    plt.close(fig)
    return path


def _integer_ticks(ax: Axes, x: bool = True, y: bool = True) -> None:
    """Ticks only at whole numbers (token positions, layer numbers), never at 2.5."""
    if x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if y:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def shown_layers(depth: int, count: int = 4) -> list[int]:
    """``count`` layers spread evenly from the first to the last (fewer when the model is shallower)."""
    return sorted({int(round(x)) for x in np.linspace(0, depth - 1, min(count, depth))})


def plot_attention_overlay(
    images: Sequence[np.ndarray], maps: np.ndarray, layers: Sequence[int], path: str | Path, title: str = "",
) -> Path:
    """Images with the cls token's hidden-attention map over them, one row per image, one column per layer.

    Args:
        images: N arrays (H, W, 3), values in 0..1.
        maps: (N, len(layers), rows, cols) attention magnitudes over the patch grid; each map is scaled to its max.
        layers: the layer numbers (0-based) of the columns.
    """
    count, columns = len(images), len(layers) + 1
    fig, axes = plt.subplots(count, columns, figsize=(1.9 * columns, 1.9 * count + 0.5), squeeze=False)
    for row, image in enumerate(images):
        height, width = image.shape[:2]
        axes[row, 0].imshow(image)
        axes[row, 0].set_title("input" if row == 0 else "", fontsize=9)
        for col, layer in enumerate(layers, start=1):
            ax = axes[row, col]
            heat = maps[row, col - 1]
            heat = heat / max(float(heat.max()), 1e-30)
            ax.imshow(image.mean(axis=-1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            # one flat square per patch: smoothing would spread a patch's value over its neighbours
            shown = ax.imshow(heat, cmap="inferno", alpha=0.65, vmin=0, vmax=1, interpolation="nearest",
                              extent=(0, width, height, 0))
            if row == 0:
                ax.set_title(f"layer {layer + 1}", fontsize=9)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(shown, ax=axes, fraction=0.025, pad=0.02, label="|cls attention| / max")
    fig.suptitle(title or "hidden attention of the cls token (both scan directions)", fontsize=10)
    return _save(fig, path)


def plot_gate_comparison(
    plain: np.ndarray, tuned: np.ndarray, path: str | Path, method: str, cls_position: float | None = None,
) -> Path:
    """The mean gate ``delta`` per layer and patch token, plain backbone against the tuned model, and their change.

    Args:
        plain, tuned: (L, M) gates averaged over channels, directions and images, patches in sequence order.
        method: the tuned model's method name (titles).
        cls_position: where the cls token sits among the patches (a marker line), or None.
    """
    depth, patches = plain.shape
    change = tuned - plain
    low, high = float(min(plain.min(), tuned.min())), float(max(plain.max(), tuned.max()))
    bound = max(float(np.abs(change).max()), 1e-12)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), gridspec_kw={"width_ratios": [1, 1, 1, 0.8]})
    extent = (-0.5, patches - 0.5, depth + 0.5, 0.5)
    panels = [(plain, "plain backbone", "viridis", low, high), (tuned, f"with {method}", "viridis", low, high),
              (change, f"{method} - plain", "RdBu_r", -bound, bound)]
    for ax, (values, name, cmap, vmin, vmax) in zip(axes, panels, strict=False):
        shown = ax.imshow(values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, extent=extent,
                          interpolation="nearest")
        fig.colorbar(shown, ax=ax, fraction=0.05, pad=0.02, label="mean delta" if cmap == "viridis" else "change")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("patch token (sequence order)")
        ax.set_ylabel("layer")
        _integer_ticks(ax)
        if cls_position is not None:
            ax.axvline(cls_position, color="white" if cmap == "viridis" else "gray", lw=0.8, ls="--")
    layers = np.arange(1, depth + 1)
    ax = axes[3]
    ax.plot(layers, plain.mean(axis=1), marker="o", ms=3, label="plain")
    ax.plot(layers, tuned.mean(axis=1), marker="o", ms=3, ls="--", label=method)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean delta over tokens")
    ax.set_title("per layer", fontsize=10)
    _integer_ticks(ax, y=False)
    ax.grid(True, alpha=0.3)
    relative = ax.twinx()  # the change is often far smaller than the gate itself
    relative.plot(layers, 100 * (np.abs(change) / np.maximum(plain, 1e-30)).mean(axis=1), marker="s", ms=3,
                  color="gray", label="mean |change| / plain (%)")
    relative.set_ylabel("mean |change| (% of plain)", color="gray")
    relative.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + relative.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle(f"selective gate (delta, the step size) per token: plain backbone vs {method}", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_prompt_magnitude(magnitude: np.ndarray, token_norm: np.ndarray, path: str | Path,
                          cls_position: float | None = None) -> Path:
    """SVP's prompt magnitude ``|prompt(t) - t|`` per layer and patch token, and per layer relative to ``|t|``.

    Args:
        magnitude: (L, M) L2 norms of the prompt, averaged over images, patches in sequence order.
        token_norm: (L, M) L2 norms of the prompted tokens ``|t|`` (same layout), for the relative size.
    """
    depth, patches = magnitude.shape
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1.4, 1]})
    shown = axes[0].imshow(magnitude, aspect="auto", cmap="magma", extent=(-0.5, patches - 0.5, depth + 0.5, 0.5),
                           interpolation="nearest")
    fig.colorbar(shown, ax=axes[0], fraction=0.05, pad=0.02, label="|prompt - token|")
    if cls_position is not None:
        axes[0].axvline(cls_position, color="white", lw=0.8, ls="--")
    axes[0].set_xlabel("patch token (sequence order)")
    axes[0].set_ylabel("layer")
    _integer_ticks(axes[0])
    axes[0].set_title("prompt magnitude per token", fontsize=10)
    relative = magnitude / np.maximum(token_norm, 1e-12)
    layers = np.arange(1, depth + 1)
    axes[1].plot(layers, relative.mean(axis=1), marker="o", ms=3, label="mean over tokens")
    axes[1].fill_between(layers, relative.min(axis=1), relative.max(axis=1), alpha=0.25, label="min-max over tokens")
    axes[1].set_xlabel("layer")
    axes[1].set_ylabel("|prompt - token| / |token|")
    _integer_ticks(axes[1], y=False)
    axes[1].set_title("relative prompt size per layer", fontsize=10)
    axes[1].grid(True, alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("SVP: size of the token-wise prompt per token and layer", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_prompt_influence(share: np.ndarray, positions: np.ndarray, prompt_positions: np.ndarray,
                          path: str | Path) -> Path:
    """How much of each token's hidden attention falls on the prompt tokens, along the sequence, per layer.

    Args:
        share: (L, M) ``sum over prompts |alpha[t, p]| / sum over all s |alpha[t, s]|`` for each patch token t.
        positions: (M,) the patches' positions in the sequence.
        prompt_positions: (P,) the prompts' positions (shaded).
    """
    depth = share.shape[0]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    colours = plt.cm.viridis(np.linspace(0, 0.9, depth))
    for layer in range(depth):
        ax.plot(positions, np.maximum(share[layer], 1e-12), color=colours[layer], lw=1.2, label=f"layer {layer + 1}")
    for position in prompt_positions:
        ax.axvspan(position - 0.5, position + 0.5, color="tab:red", alpha=0.15, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("token position in the sequence (prompts shaded)")
    _integer_ticks(ax, y=False)
    ax.set_ylabel("share of |attention| on prompts")
    ax.set_title("VPT: the prompts' influence along the sequence (hidden attention, both directions)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if depth > 6 else 1, loc="best")
    fig.tight_layout()
    return _save(fig, path)
