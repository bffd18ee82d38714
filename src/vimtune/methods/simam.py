"""Parameter-free SimAM reweighting of the input image (an optional extra of the SVP release)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vimtune.models.vim import VisionMamba


def simam(x: Tensor, eps: float = 1e-3) -> Tensor:
    """SimAM: ``x * sigmoid((x - mu)^2 / (4 (var + eps)) + 0.5)``, per image and channel over H x W.

    ``mu`` is the mean and ``var`` the unbiased variance (divisor H*W - 1, as in the SimAM paper)
    over the spatial positions. (B, C, H, W) -> (B, C, H, W).
    """
    centred = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
    var = centred.sum(dim=(2, 3), keepdim=True) / max(x.shape[2] * x.shape[3] - 1, 1)
    return x * torch.sigmoid(centred / (4 * (var + eps)) + 0.5)


def _simam_pre_hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Forward pre-hook of the patch embedding: the image goes through :func:`simam` first."""
    return (simam(args[0]), *args[1:])


def has_simam(model: VisionMamba) -> bool:
    """Whether :func:`add_simam` was applied to ``model``."""
    return _simam_pre_hook in model.patch_embed._forward_pre_hooks.values()


def add_simam(model: VisionMamba) -> None:
    """Apply :func:`simam` to every input image of ``model`` (a pre-hook on ``patch_embed``).

    Parameter-free, so state-dict names are unchanged; the hook survives ``copy.deepcopy``.
    """
    if has_simam(model):
        raise RuntimeError("SimAM is already applied to this model's input")
    model.patch_embed.register_forward_pre_hook(_simam_pre_hook)
