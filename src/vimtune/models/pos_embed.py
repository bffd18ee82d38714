"""Position-embedding resizing for middle-cls-token Vision Mamba (SPEC-VIM section 6)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def square_grid(num_patches: int) -> tuple[int, int]:
    """The (rows, cols) of a square patch grid with ``num_patches`` cells; error if not square."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"cannot infer the patch grid of {num_patches} patches: not a square; pass old_grid")
    return side, side


def resize_pos_embed(
    pos_embed: Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_extra_tokens: int = 1,
) -> Tensor:
    """Interpolate a middle-cls position embedding onto another patch grid.

    The cls slot sits at index ``M // 2`` (M = patches). It is taken out, the patch grid is resized
    bicubically, and the slot goes back at the new ``M' // 2``.

    Args:
        pos_embed: (1, M + 1, D) with the cls slot at ``M // 2`` (or (1, M, D) when
            ``num_extra_tokens`` is 0).
        new_grid: (rows, cols) of the target patch grid.
        old_grid: (rows, cols) of the source grid; inferred as square when None.

    Returns:
        (1, rows * cols + num_extra_tokens, D), same dtype.
    """
    if num_extra_tokens not in (0, 1):
        raise ValueError("num_extra_tokens must be 0 or 1 (one middle cls token)")
    num_patches = pos_embed.shape[1] - num_extra_tokens
    old_grid = old_grid or square_grid(num_patches)
    if old_grid[0] * old_grid[1] != num_patches:
        raise ValueError(f"old_grid {old_grid} does not hold the {num_patches} patches of pos_embed")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    mid = num_patches // 2
    if num_extra_tokens:
        cls_slot = pos_embed[:, mid : mid + 1]
        patches = torch.cat([pos_embed[:, :mid], pos_embed[:, mid + 1 :]], dim=1)
    else:
        patches = pos_embed
    dim = patches.shape[-1]
    grid = patches.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    if not num_extra_tokens:
        return patches
    new_mid = patches.shape[1] // 2
    return torch.cat([patches[:, :new_mid], cls_slot, patches[:, new_mid:]], dim=1)
