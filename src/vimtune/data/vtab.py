"""VTAB-1k list-file tasks.

A task folder holds ``train800.txt``, ``val200.txt``, ``train800val200.txt`` and ``test.txt``;
each line is ``relative/path label`` with the path relative to the task folder and an integer
label. An optional ``classes.txt`` gives the class names (line ``i`` = label ``i``). A task with
fewer images may list fewer than 800 / 200 lines under the same file names; that is fine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .base import ImageListDataset
from .errors import DatasetNotFoundError
from .listed_files import ListedImage, check_listed_images
from .text_files import read_text

__all__ = ["VTAB_SPLIT_FILES", "VTabDataset", "read_list_file"]

#: Split name -> list file inside the task folder.
VTAB_SPLIT_FILES: dict[str, str] = {
    "train": "train800.txt",
    "val": "val200.txt",
    "trainval": "train800val200.txt",
    "test": "test.txt",
}


def read_list_file(list_file: str, base_dir: str) -> list[tuple[str, int]]:
    """Parse a ``relative/path label`` list file; paths are joined onto ``base_dir``.

    Blank lines are ignored. The label is the last whitespace-separated field, so a path may
    itself contain spaces. The file is UTF-8 (a leading byte-order mark is dropped).

    Raises:
        ValueError: a line without a path and an integer label, or a file that is not UTF-8
            (message gives file and line).
    """
    return [(path, label) for path, label, _ in _read_listed(list_file, base_dir)]


def _read_listed(list_file: str, base_dir: str) -> list[ListedImage]:
    """As :func:`read_list_file`, each entry with ``"line N"`` saying where it is listed."""
    samples: list[ListedImage] = []
    for lineno, line in enumerate(read_text(list_file).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        try:
            if len(parts) != 2:
                raise ValueError("expected 'path label'")
            samples.append((os.path.join(base_dir, parts[0]), int(parts[1]), f"line {lineno}"))
        except ValueError as exc:
            raise ValueError(f"{list_file}:{lineno}: malformed line {line!r} ({exc})") from None
    return samples


def _read_classes(path: str) -> list[str]:
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


class VTabDataset(ImageListDataset):
    """One split of a VTAB-1k task folder.

    Args:
        root: the task folder (holding the list files).
        split: ``train`` (train800.txt), ``val`` (val200.txt), ``trainval`` (train800val200.txt)
            or ``test`` (test.txt).
        transform: applied to the RGB PIL image.
        skip_bad_images: decode every image once now and drop unreadable ones (missing ones too).
        allow_outside_root: accept list paths that leave the task folder (``../x.png``).

    ``classes`` come from ``classes.txt`` when present; otherwise the number of classes is
    ``1 + the largest label`` found in any of the task's list files and the names are
    ``"0", "1", ...``.

    Raises:
        DatasetNotFoundError: the task folder, the split's list file or a listed image is missing.
        EmptySplitError: the list file lists no image.
        ValueError: an unknown split name, a malformed line, a path outside the task folder, or a
            label outside ``classes.txt``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        transform: Callable[[Any], Any] | None = None,
        skip_bad_images: bool = False,
        allow_outside_root: bool = False,
    ) -> None:
        self.root = os.fspath(root)
        self.split = split
        if split not in VTAB_SPLIT_FILES:
            raise ValueError(f"unknown VTAB split {split!r}; expected one of {sorted(VTAB_SPLIT_FILES)}")
        if not os.path.isdir(self.root):
            raise DatasetNotFoundError(f"VTAB task folder '{self.root}' does not exist")
        list_file = os.path.join(self.root, VTAB_SPLIT_FILES[split])
        if not os.path.isfile(list_file):
            raise DatasetNotFoundError(
                f"VTAB split {split!r} expects list file '{list_file}', which does not exist"
            )
        self.list_file = list_file
        listed = _read_listed(list_file, self.root)
        check_listed_images(listed, f"'{list_file}'", self.root, allow_outside_root, check_exists=not skip_bad_images)
        samples = [(path, label) for path, label, _ in listed]
        classes_file = os.path.join(self.root, "classes.txt")
        if os.path.isfile(classes_file):
            classes = _read_classes(classes_file)
        else:
            top = max((y for _, y in samples), default=-1)
            for other in VTAB_SPLIT_FILES.values():
                other_path = os.path.join(self.root, other)
                if other_path != list_file and os.path.isfile(other_path):
                    top = max([top] + [y for _, y in read_list_file(other_path, self.root)])
            classes = [str(i) for i in range(top + 1)]
        super().__init__(samples, classes, transform, skip_bad_images, name=f"vtab '{self.root}' [{split}]")
