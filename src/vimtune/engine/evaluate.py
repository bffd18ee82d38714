"""Evaluation of a classifier over a dataset, sharded over processes without duplicates."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from vimtune.data import build_loader
from vimtune.engine.distributed import DistContext
from vimtune.engine.metrics import ClassificationMeter


def build_eval_loader(dataset: Dataset, batch_size: int, num_workers: int, ctx: DistContext) -> DataLoader:
    """In-order loader over this process's share (``rank, rank + world, ...``) of ``dataset``.

    Unlike a padded ``DistributedSampler`` every sample is counted exactly once over all processes.
    """
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size)) if ctx.distributed else dataset
    return build_loader(shard, batch_size, train=False, num_workers=num_workers)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    ctx: DistContext,
    bf16: bool = False,
    desc: str = "eval",
) -> ClassificationMeter:
    """Run ``model`` over ``loader`` (images (B, 3, H, W) -> logits (B, C)); counts summed over ranks."""
    was_training = model.training
    model.eval()
    meter = ClassificationMeter(num_classes)
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=not ctx.is_main):
        images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), targets, reduction="sum")
        meter.update(logits, targets, float(loss))
    model.train(was_training)
    return meter.reduce(ctx)
