"""``build_loader``: DataLoader with a distributed or seeded sampler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["build_loader", "set_loader_epoch"]


def build_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    distributed: bool = False,
    seed: int = 0,
    *,
    pin_memory: bool | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """Wrap ``dataset`` in a DataLoader.

    * ``distributed=True`` and ``torch.distributed`` initialised: a :class:`DistributedSampler`
      (shuffled with ``seed`` for training, in order for evaluation). Each rank sees
      ``ceil(len / world_size)`` samples; for evaluation the sampler pads by repeating a few
      samples so that ranks get equal counts. Call :func:`set_loader_epoch` every epoch so the
      shuffle changes.
    * Otherwise: training shuffles with a ``torch.Generator`` seeded with ``seed`` (the same
      generator also seeds the workers' ``random``/``numpy``/``torch`` states, so augmentation
      is reproducible for a fixed ``num_workers``); evaluation reads in order.

    Training workers start afresh every epoch, seeded from the generator: a resumed run that
    restores the generator's state then continues every worker's random stream exactly, which
    workers kept alive across epochs (whose streams no checkpoint holds) would not allow.
    Evaluation workers, which draw no random numbers, stay alive across epochs.

    Training drops the last incomplete batch (Mixup needs an even, full batch); evaluation keeps
    every sample.

    Args:
        pin_memory: default: pin when CUDA is available.
        collate_fn: passed to the DataLoader (default collation when ``None``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler: DistributedSampler | None = None
    if distributed and dist.is_available() and dist.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=False)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=train,
        generator=generator,
        persistent_workers=num_workers > 0 and not train,
        collate_fn=collate_fn,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell a :class:`DistributedSampler` (if the loader has one) which epoch starts."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
