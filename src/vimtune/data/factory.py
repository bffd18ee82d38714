"""``build_dataset``: one entry point for every supported dataset kind."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from vimtune.choices import DATASET_KINDS

from .cifar import CIFARDataset
from .errors import DatasetNotFoundError
from .fgvc import FGVCDataset
from .imagefolder import ImageFolderDataset
from .vtab import VTabDataset

__all__ = ["DATASET_KINDS", "build_dataset", "has_split"]

#: Kinds with a fixed set of splits (the others are folders or files named by the split).
_FIXED_SPLITS: dict[str, tuple[str, ...]] = {"cifar10": ("train", "trainval", "test"),
                                             "cifar100": ("train", "trainval", "test")}


def has_split(kind: str, split: str) -> bool:
    """Whether ``kind`` can have ``split`` (CIFAR has no ``val``; folder kinds may have any)."""
    return split in _FIXED_SPLITS.get(kind, (split,))


def build_dataset(
    kind: str,
    root: str | os.PathLike[str],
    split: str,
    transform: Callable[[Any], Any] | None = None,
    skip_bad_images: bool = False,
    allow_outside_root: bool = False,
) -> Dataset:
    """Build one split of a local dataset.

    Args:
        kind: one of :data:`DATASET_KINDS`:

            * ``imagefolder`` -- ``root/<split>/<class>/<image>``; pass ``split=""`` when
              ``root`` itself holds the class folders.
            * ``vtab`` -- a VTAB-1k task folder; split ``train|val|trainval|test``.
            * ``fgvc`` -- ``root/{train,val,test}.json``; split ``train|val|trainval|test``.
            * ``cifar10`` / ``cifar100`` -- python-pickle batches; split ``train|trainval|test``.
        root: dataset folder.
        split: split name (see above).
        transform: applied to each RGB PIL image.
        skip_bad_images: decode every image once now and drop unreadable ones (``.skipped``
            lists them, one warning gives the count). Ignored for CIFAR, whose images are arrays.
        allow_outside_root: accept list/json paths that leave ``root`` (VTAB, FGVC); refused
            by default.

    Returns:
        A map-style dataset yielding ``(transform(image), label)`` with ``classes`` and
        ``num_classes`` (and ``samples`` for the file-based kinds).

    Raises:
        ValueError: unknown ``kind`` or split name.
        DatasetNotFoundError: missing root, split folder, split file or listed image (named in the
            message).
        EmptySplitError: a split file that lists no image.
    """
    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"{kind} dataset root '{root}' does not exist or is not a directory")
    if kind == "imagefolder":
        split_dir = os.path.join(root, split) if split else root
        if not os.path.isdir(split_dir):
            raise DatasetNotFoundError(
                f"imagefolder split {split!r} expects folder '{split_dir}', which does not exist"
            )
        return ImageFolderDataset(split_dir, transform=transform, skip_bad_images=skip_bad_images)
    if kind == "vtab":
        return VTabDataset(root, split, transform, skip_bad_images, allow_outside_root)
    if kind == "fgvc":
        return FGVCDataset(root, split, transform, skip_bad_images, allow_outside_root)
    return CIFARDataset(root, split, variant=kind, transform=transform)
