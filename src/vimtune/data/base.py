"""A map-style dataset over a list of ``(image path, label)`` pairs."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import Dataset

from .image_io import check_image, load_rgb
from .safe_augment import apply_transform

__all__ = ["ImageListDataset"]


class ImageListDataset(Dataset):
    """Images listed as ``(path, label)`` pairs, loaded lazily as RGB.

    ``dataset[i]`` returns ``(transform(image), label)`` (the PIL image itself when ``transform``
    is ``None``). Unreadable images raise :class:`~vimtune.data.errors.BadImageError` naming the
    file. With ``skip_bad_images=True`` every image is decoded once at construction; the bad ones
    are dropped from :attr:`samples`, listed in :attr:`skipped`, and a single warning reports how
    many were skipped. The default path does no pre-scan.

    Attributes:
        samples: ``(path, label)`` pairs actually served.
        classes: class names, index = label.
        num_classes: number of classes (``len(classes)``).
        skipped: paths dropped by the ``skip_bad_images`` scan (empty otherwise).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        transform: Callable[[Any], Any] | None = None,
        skip_bad_images: bool = False,
        name: str = "dataset",
    ) -> None:
        self.samples: list[tuple[str, int]] = [(os.fspath(p), int(y)) for p, y in samples]
        self.classes: list[str] = list(classes)
        self.transform = transform
        self.name = name
        self.skipped: list[str] = []
        self._check_labels()
        if skip_bad_images:
            self._drop_bad_images()

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def targets(self) -> list[int]:
        """Labels of :attr:`samples`, in order."""
        return [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        img = load_rgb(path, label)
        if self.transform is not None:
            img = apply_transform(self.transform, img, f"'{path}' (label {label})")
        return img, label

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, samples={len(self)}, "
                f"classes={self.num_classes}, skipped={len(self.skipped)})")

    def _check_labels(self) -> None:
        for path, label in self.samples:
            if not 0 <= label < len(self.classes):
                raise ValueError(
                    f"{self.name}: label {label} of '{path}' is outside 0..{len(self.classes) - 1} "
                    f"({len(self.classes)} classes)"
                )

    def _drop_bad_images(self) -> None:
        kept: list[tuple[str, int]] = []
        first_reason = ""
        for path, label in self.samples:
            reason = check_image(path)
            if reason is None:
                kept.append((path, label))
            else:
                if not self.skipped:
                    first_reason = reason
                self.skipped.append(path)
        if self.skipped:
            warnings.warn(
                f"{self.name}: skipped {len(self.skipped)} unreadable images, "
                f"first: '{self.skipped[0]}' ({first_reason})",
                stacklevel=3,
            )
        if not kept:
            raise ValueError(f"{self.name}: all {len(self.samples)} images are unreadable")
        self.samples = kept
