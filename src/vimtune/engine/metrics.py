"""Classification metrics accumulated batch by batch and summed over processes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vimtune.engine.distributed import DistContext, all_reduce


class ClassificationMeter:
    """Confusion matrix, top-k hits and summed loss of a classifier over a dataset.

    Args:
        num_classes: number of classes ``C``; top-k uses ``k = min(5, C)``.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.topk = min(5, num_classes)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.topk_hits = torch.zeros((), dtype=torch.int64)
        self.loss_sum = torch.zeros((), dtype=torch.float64)

    def update(self, logits: Tensor, targets: Tensor, loss_sum: float) -> None:
        """Add a batch: ``logits`` (B, C), integer ``targets`` (B,), the batch's summed loss."""
        logits, targets = logits.detach().float().cpu(), targets.detach().cpu()
        predicted = logits.argmax(dim=1)
        self.confusion += torch.bincount(
            targets * self.num_classes + predicted, minlength=self.num_classes**2
        ).view(self.num_classes, self.num_classes)
        top = logits.topk(self.topk, dim=1).indices
        self.topk_hits += (top == targets[:, None]).any(dim=1).sum()
        self.loss_sum += loss_sum

    def reduce(self, ctx: DistContext) -> ClassificationMeter:
        """Sum the counts of every process (in place); returns ``self``."""
        for tensor in (self.confusion, self.topk_hits, self.loss_sum):
            all_reduce(tensor, ctx)
        return self

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    def per_class_accuracy(self) -> list[float | None]:
        """Recall of each class in percent (``None`` for a class without samples)."""
        support = self.confusion.sum(dim=1)
        diagonal = self.confusion.diagonal()
        return [100.0 * float(d) / float(s) if s else None for d, s in zip(diagonal, support, strict=True)]

    def summary(self) -> dict[str, Any]:
        """``{"top1", "top5", "loss", "count"}`` (top5 means top-``min(5, C)``), percents."""
        n = max(self.count, 1)
        return {
            "top1": 100.0 * float(self.confusion.diagonal().sum()) / n,
            "top5": 100.0 * float(self.topk_hits) / n,
            "loss": float(self.loss_sum) / n,
            "count": self.count,
        }
