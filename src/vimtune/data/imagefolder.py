"""ImageFolder trees: ``root/<class name>/<image>``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .base import ImageListDataset
from .errors import DatasetNotFoundError
from .image_io import IMG_EXTENSIONS

__all__ = ["ImageFolderDataset", "scan_image_folder"]


def scan_image_folder(root: str) -> tuple[list[tuple[str, int]], list[str]]:
    """List the images of an ImageFolder tree.

    Follows torchvision's ``ImageFolder`` conventions: every sub-folder of ``root`` is a class,
    classes are sorted by name (label = index in that order), images are found recursively inside
    each class folder, files are sorted, hidden files/folders are ignored and only files ending in
    :data:`~vimtune.data.image_io.IMG_EXTENSIONS` (case-insensitive) are kept.

    Returns:
        ``(samples, classes)``.

    Raises:
        DatasetNotFoundError: ``root`` is not a folder.
        ValueError: ``root`` has no class folders, or a class folder holds no images.
    """
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"image folder '{root}' does not exist or is not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"image folder '{root}' has no class sub-folders (expected root/<class>/<image>)")
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        class_dir = os.path.join(root, name)
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(
                os.path.join(dirpath, f) for f in filenames
                if not f.startswith(".") and f.lower().endswith(IMG_EXTENSIONS)
            )
        if not found:
            raise ValueError(f"class folder '{class_dir}' holds no image files ({', '.join(IMG_EXTENSIONS)})")
        samples.extend((p, label) for p in sorted(found))
    return samples, classes


class ImageFolderDataset(ImageListDataset):
    """An ImageFolder tree ``root/<class>/<image>`` (see :func:`scan_image_folder`).

    Args:
        root: the tree's top folder (the one holding the class folders).
        transform: applied to the RGB PIL image.
        skip_bad_images: decode every image once now and drop unreadable ones.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Any], Any] | None = None,
        skip_bad_images: bool = False,
    ) -> None:
        self.root = os.fspath(root)
        samples, classes = scan_image_folder(self.root)
        super().__init__(samples, classes, transform, skip_bad_images, name=f"imagefolder '{self.root}'")
