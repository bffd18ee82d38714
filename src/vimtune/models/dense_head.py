"""A small semantic-segmentation head on a Vim backbone's intermediate feature maps.

The maps of a few blocks (:meth:`VisionMamba.forward_intermediates`, all on the patch grid) are each
projected by a 1x1 convolution, summed, mixed by a 3x3 convolution, classified per position, and
upsampled to the input size. A minimal example of dense prediction with Vim, not a tuned decoder.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vimtune.models.vim import VisionMamba


class SegmentationHead(nn.Module):
    """Per-pixel class logits from the residual stream of ``indices`` blocks of ``backbone``.

    Args:
        backbone: a VisionMamba (trained with the head, or frozen by the caller).
        num_classes: classes per pixel.
        indices: blocks whose outputs are used (negative counts from the end).
        channels: width of the head.
    """

    def __init__(self, backbone: VisionMamba, num_classes: int, indices: tuple[int, ...] = (-3, -2, -1),
                 channels: int = 64) -> None:
        super().__init__()
        self.backbone = backbone
        self.indices = list(indices)
        dim = backbone.embed_dim
        self.project = nn.ModuleList(nn.Conv2d(dim, channels, kernel_size=1) for _ in self.indices)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.BatchNorm2d(channels), nn.GELU()
        )
        self.classify = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) -> logits (B, num_classes, H, W)."""
        maps = self.backbone.forward_intermediates(images, indices=self.indices, intermediates_only=True)
        fused = sum(project(m) for project, m in zip(self.project, maps, strict=True))
        logits = self.classify(self.fuse(fused))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
