"""Tiny Vision Mamba models, inputs and parameter perturbations shared by the method tests."""

from __future__ import annotations

from collections.abc import Iterable

import timm
import torch

import vimtune.models  # noqa: F401 - registers the Vim configs with timm

#: vim_small's layout shrunk to 4 blocks of width 32 on 32 px images with 8 px patches (16 patches, cls at 8).
TINY = {"depth": 4, "embed_dim": 32, "img_size": 32, "patch_size": 8}

#: A tiny backbone for the demo and transfer commands (2 blocks, width 32, 16 px) ...
TINY_BACKBONE = {"depth": 2, "embed_dim": 32, "img_size": 16}
#: ... and the command-line options that build it.
TINY_BACKBONE_ARGS = ["--backbone", "vim_nano_patch4_32",
                      *[arg for key, value in TINY_BACKBONE.items() for arg in ("--backbone-kwarg", f"{key}={value}")]]


def tiny(num_classes: int = 10, **kwargs: object) -> torch.nn.Module:
    """``vim_small_patch16_224`` built with :data:`TINY` (``kwargs`` override it)."""
    return timm.create_model("vim_small_patch16_224", num_classes=num_classes, **{**TINY, **kwargs})


def images(size: int = 32, seed: int = 0) -> torch.Tensor:
    """A seeded batch of two random images, (2, 3, size, size)."""
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def perturb(params: Iterable[torch.Tensor], seed: int = 1) -> None:
    """Move every parameter away from its (possibly zero) initial value by seeded noise of std 0.1."""
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.add_(0.1 * torch.randn(p.shape, generator=gen))
