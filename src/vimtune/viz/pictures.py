"""All pictures of ``vimtune viz`` for one model and a few images: what :func:`collect` gathers, drawn.

Written to ``out_dir`` (``prefix`` before every name):

- ``attention.png``: the images with the cls token's hidden-attention map over them, for a few layers;
- ``gates.png``: the mean gate (delta) per layer and patch token, plain backbone against the tuned model
  (when the plain backbone is given);
- ``svp_prompts.png``: SVP's prompt magnitude per layer and token (models with ``Block.prompter``s);
- ``vpt_prompt_influence.png``: the share of hidden attention each token spends on the prompt tokens, along
  the sequence (models whose ``embed_hook`` adds prompt tokens, e.g. VPT);
- ``gate_change.json``: the numbers behind ``gates.png``, the mean gate change in the first and last quarter of
  the sequence (:mod:`vimtune.viz.gate_change`; with the plain backbone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vimtune.models.vim import VisionMamba
from vimtune.viz.capture import Collected, TokenLayout, collect
from vimtune.viz.figures import (
    plot_attention_overlay,
    plot_gate_comparison,
    plot_prompt_influence,
    plot_prompt_magnitude,
    shown_layers,
)
from vimtune.viz.gate_change import GateChange, gate_change, write_gate_change


def cls_marker(layout: TokenLayout) -> float:
    """Where the cls token sits among the patches in sequence order (between two patch indices)."""
    return float((layout.patch_index < layout.cls_index).sum()) - 0.5


def patch_gates(collected: Collected) -> np.ndarray:
    """(L, M): the gate averaged over images and both directions, patches in sequence order (which is grid order)."""
    return collected.layout.patches(collected.gate.mean(dim=(1, 2))).numpy()


def prompt_share(collected: Collected) -> np.ndarray:
    """(L, M): per patch token (sequence order), the share of its |hidden attention| that falls on prompt tokens."""
    layout = collected.layout
    magnitude = collected.attention.abs()[:, :, layout.patch_index]  # (L, B, M, T)
    on_prompts = magnitude[..., layout.prompt_index].sum(-1)
    return (on_prompts / magnitude.sum(-1).clamp(min=1e-30)).mean(dim=1).numpy()


@dataclass
class Drawn:
    """What :func:`make_pictures` wrote: the files, and the gate change when the plain backbone was given."""

    files: list[Path] = field(default_factory=list)
    gate_change: GateChange | None = None


def make_pictures(
    model: VisionMamba, images: Tensor, shown: Sequence[np.ndarray], out_dir: str | Path, method: str,
    plain: VisionMamba | None = None, prefix: str = "",
) -> Drawn:
    """Collect what ``model`` does on ``images`` and write the pictures and numbers listed in the module docstring.

    Args:
        model: the tuned model (eval mode is set while collecting).
        images: (N, 3, H, W) normalised inputs on the model's device.
        shown: N arrays (H, W, 3) in 0..1, the inputs as displayed.
        out_dir: the folder to write to (created).
        method: the method's name, for titles.
        plain: the backbone without the method (for the gate comparison), or None.
        prefix: put before every file name.
    """
    out_dir = Path(out_dir)
    has_prompt_tokens = model.embed_hook is not None and model.embed_hook.num_extra_tokens > 0
    tuned = collect(model, images, full_maps=has_prompt_tokens)
    layout = tuned.layout
    layers = shown_layers(len(model.layers))
    maps = layout.to_grid(tuned.cls_attention.abs())[layers].transpose(0, 1).numpy()  # (N, layers, rows, cols)
    written = [plot_attention_overlay(shown, maps, layers, out_dir / f"{prefix}attention.png",
                                      title=f"{method}: hidden attention of the cls token (both scan directions)")]
    change = None
    if plain is not None:
        plain_gates, tuned_gates = patch_gates(collect(plain, images)), patch_gates(tuned)
        written.append(plot_gate_comparison(plain_gates, tuned_gates, out_dir / f"{prefix}gates.png", method,
                                            cls_marker(layout)))
        change = gate_change(plain_gates, tuned_gates, method, images.shape[0])
        written.append(write_gate_change(change, out_dir / f"{prefix}gate_change.json"))
    if tuned.prompt_magnitude is not None:
        magnitude = layout.patches(tuned.prompt_magnitude.mean(dim=1)).numpy()
        token_norm = layout.patches(tuned.token_norm.mean(dim=1)).numpy()
        written.append(plot_prompt_magnitude(magnitude, token_norm, out_dir / f"{prefix}svp_prompts.png",
                                             cls_marker(layout)))
    if has_prompt_tokens:
        influence = out_dir / f"{prefix}vpt_prompt_influence.png"
        written.append(plot_prompt_influence(prompt_share(tuned), layout.patch_index.numpy(),
                                             layout.prompt_index.numpy(), influence))
    return Drawn(written, change)


def displayable(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> list[np.ndarray]:
    """Normalised (N, 3, H, W) inputs back to N arrays (H, W, 3) in 0..1."""
    scale = torch.tensor(std).view(1, 3, 1, 1)
    shift = torch.tensor(mean).view(1, 3, 1, 1)
    restored = (images.detach().float().cpu() * scale + shift).clamp(0, 1)
    return list(restored.permute(0, 2, 3, 1).numpy())
