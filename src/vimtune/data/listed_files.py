"""Checks on the image paths a split file lists: inside the dataset root, and present on disk."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .errors import DatasetNotFoundError, EmptySplitError

__all__ = ["ListedImage", "check_listed_images"]

#: ``(path joined onto the root, label, where it is listed: "line 12", "key 'a/b.jpg'")``
ListedImage = tuple[str, int, str]


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` stays under ``root`` lexically (``..`` and absolute paths leave; symlinks do not)."""
    root = os.path.normpath(os.path.abspath(root))
    return os.path.commonpath([root, os.path.normpath(os.path.abspath(path))]) == root


def check_listed_images(
    images: Sequence[ListedImage],
    split_file: str,
    root: str,
    allow_outside_root: bool = False,
    check_exists: bool = True,
) -> None:
    """Refuse an empty split, paths that leave ``root`` and (with ``check_exists``) missing files.

    Runs before any training step, so a bad test split is found at the start, not after training.

    Args:
        images: the listed images.
        split_file: the split file(s) as messages name them, quoted (``"'/data/task/test.txt'"``).
        root: the dataset root the paths must stay under.
        allow_outside_root: accept paths that leave ``root``.
        check_exists: check that every listed file exists.

    Raises:
        EmptySplitError: ``split_file`` lists no image.
        ValueError: a path leaves ``root`` and ``allow_outside_root`` is off.
        DatasetNotFoundError: a listed file does not exist (first one named, with the count).
    """
    if not images:
        raise EmptySplitError(f"split file {split_file} lists no images")
    if not allow_outside_root:
        for path, _, where in images:
            if not _inside(path, root):
                raise ValueError(
                    f"{split_file} {where}: image path '{path}' is outside the dataset root '{root}'; "
                    "set data.allow_outside_root=true (--allow-outside-root) if that is intended"
                )
    if check_exists:
        missing = [(path, where) for path, _, where in images if not os.path.isfile(path)]
        if missing:
            path, where = missing[0]
            more = f" ({len(missing)} listed files are missing in all)" if len(missing) > 1 else ""
            raise DatasetNotFoundError(f"{split_file} {where}: listed image '{path}' does not exist{more}")
