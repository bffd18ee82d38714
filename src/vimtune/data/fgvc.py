"""FGVC json splits (the layout used by the VPT / NOAH fine-grained benchmarks).

``root/{train,val,test}.json`` each map a relative image path to a class id. The image paths
are relative to ``root/images`` or to ``root`` itself; both are accepted (``root/images`` is
tried first, decided once per dataset from the first listed images that exist). Class ids may be integers
(any range, e.g. 1-based) or class-name strings; they are mapped to contiguous labels
``0..K-1`` in sorted order over the ids of *all* split files present, so a label means the same
class in every split. Split ``trainval`` reads ``trainval.json`` when present, otherwise the
union of ``train.json`` and ``val.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from .base import ImageListDataset
from .errors import DatasetNotFoundError, EmptySplitError
from .listed_files import check_listed_images
from .text_files import read_text

__all__ = ["FGVC_SPLITS", "FGVCDataset"]

FGVC_SPLITS: tuple[str, ...] = ("train", "val", "trainval", "test")


def _read_json_split(path: str) -> dict[str, Any]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"FGVC split file '{path}' is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"FGVC split file '{path}' must hold a JSON object {{image path: class id}}")
    return data


def _sort_key(class_id: Any) -> tuple[int, Any]:
    """Integers (or integer strings) sort numerically, before any other names."""
    try:
        return (0, int(class_id))
    except (TypeError, ValueError):
        return (1, str(class_id))


class FGVCDataset(ImageListDataset):
    """One split of an FGVC json dataset (see the module docstring for the layout).

    Args:
        root: the dataset folder holding the json files.
        split: ``train``, ``val``, ``trainval`` or ``test``.
        transform: applied to the RGB PIL image.
        skip_bad_images: decode every image once now and drop unreadable ones (missing ones too).
        allow_outside_root: accept image paths that leave ``root`` (``../x.jpg``).

    Attributes:
        class_ids: the original class ids, index = contiguous label.
        image_dir: the folder the json paths were resolved against.

    Raises:
        DatasetNotFoundError: the root, the split's json file, or a listed image is missing.
        EmptySplitError: the split lists no image.
        ValueError: a path outside ``root`` (unless allowed), or a file that is not JSON.
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
        if split not in FGVC_SPLITS:
            raise ValueError(f"unknown FGVC split {split!r}; expected one of {list(FGVC_SPLITS)}")
        if not os.path.isdir(self.root):
            raise DatasetNotFoundError(f"FGVC dataset folder '{self.root}' does not exist")

        def json_path(name: str) -> str:
            return os.path.join(self.root, f"{name}.json")

        merge = split == "trainval" and not os.path.isfile(json_path("trainval"))
        parts = ["train", "val"] if merge else [split]
        entries: dict[str, Any] = {}
        for part in parts:
            path = json_path(part)
            if not os.path.isfile(path):
                raise DatasetNotFoundError(
                    f"FGVC split {split!r} expects split file '{path}', which does not exist"
                )
            entries.update(_read_json_split(path))
        split_files = " + ".join(f"'{json_path(part)}'" for part in parts)
        if not entries:
            raise EmptySplitError(f"FGVC split file {split_files} lists no images")

        all_ids = set(entries.values())
        for other in ("train", "val", "test", "trainval"):
            if other not in parts and os.path.isfile(json_path(other)):
                all_ids.update(_read_json_split(json_path(other)).values())
        self.class_ids: list[Any] = sorted(all_ids, key=_sort_key)
        to_label = {cid: i for i, cid in enumerate(self.class_ids)}

        self.image_dir = self._find_image_dir(list(entries)[:20])
        listed = [(os.path.join(self.image_dir, rel), to_label[cid], f"entry {rel!r}") for rel, cid in entries.items()]
        check_listed_images(listed, split_files, self.root, allow_outside_root, check_exists=not skip_bad_images)
        samples = [(path, label) for path, label, _ in listed]
        classes = [str(c) for c in self.class_ids]
        super().__init__(samples, classes, transform, skip_bad_images, name=f"fgvc '{self.root}' [{split}]")

    def _find_image_dir(self, rels: list[str]) -> str:
        """The first of ``root/images``, ``root`` under which one of the first listed images exists."""
        candidates = [os.path.join(self.root, "images"), self.root]
        for rel in rels:
            for base in candidates:
                if os.path.exists(os.path.join(base, rel)):
                    return base
        tried = " or ".join(f"'{os.path.join(b, rels[0])}'" for b in candidates)
        raise DatasetNotFoundError(f"FGVC image '{rels[0]}' from split {self.split!r} not found at {tried}")
