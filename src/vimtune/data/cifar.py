"""CIFAR-10 / CIFAR-100 in the python-pickle batch format (as distributed by the authors).

``cifar-10-batches-py/`` holds ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and
``batches.meta``; ``cifar-100-python/`` holds ``train``, ``test`` and ``meta``. Each batch is a
pickled dict with ``data`` (``N x 3072`` uint8, channel-major R, G, B planes of 32x32) and
``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). Files are read with a restricted unpickler
(:mod:`vimtune.data.safe_pickle`), never with plain ``pickle.load``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .errors import DatasetNotFoundError
from .safe_augment import apply_transform
from .safe_pickle import safe_load_pickle

__all__ = ["CIFAR_LAYOUTS", "CIFARDataset"]

#: variant -> (folder name, {split: batch files}, meta file, meta names key, labels key, #classes)
CIFAR_LAYOUTS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "splits": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "meta": "batches.meta",
        "names_key": "label_names",
        "labels_key": "labels",
        "num_classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "splits": {"train": ["train"], "test": ["test"]},
        "meta": "meta",
        "names_key": "fine_label_names",
        "labels_key": "fine_labels",
        "num_classes": 100,
    },
}


def _str_keys(d: Any, path: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ValueError(f"CIFAR file '{path}' does not hold a dict (got {type(d).__name__})")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in d.items()}


def _as_str(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


class CIFARDataset(Dataset):
    """CIFAR-10 or CIFAR-100 held in memory as ``uint8`` HWC arrays.

    Args:
        root: the batch folder (``cifar-10-batches-py`` / ``cifar-100-python``) or the folder
            that contains it.
        split: ``train`` or ``test``; ``trainval`` is accepted as the full training set (CIFAR has
            no official validation split).
        variant: ``cifar10`` or ``cifar100`` (fine labels).
        transform: applied to the RGB PIL image.

    Attributes:
        data: ``(N, 32, 32, 3)`` uint8 array.
        targets: labels, ``list[int]``.
        classes: class names from the meta file (``"0"``, ``"1"``, ... if it is missing).
        skipped: always empty (arrays cannot be unreadable); kept for a uniform interface.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        variant: str = "cifar10",
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if variant not in CIFAR_LAYOUTS:
            raise ValueError(f"unknown CIFAR variant {variant!r}; expected one of {sorted(CIFAR_LAYOUTS)}")
        layout = CIFAR_LAYOUTS[variant]
        split_key = "train" if split == "trainval" else split
        if split_key not in layout["splits"]:
            raise ValueError(f"unknown {variant} split {split!r}; expected 'train', 'trainval' or 'test'")
        self.root = os.fspath(root)
        self.split = split
        self.variant = variant
        self.transform = transform
        self.skipped: list[str] = []
        self.batch_dir = self._find_batch_dir(layout)

        arrays: list[np.ndarray] = []
        labels: list[int] = []
        for name in layout["splits"][split_key]:
            path = os.path.join(self.batch_dir, name)
            if not os.path.isfile(path):
                raise DatasetNotFoundError(
                    f"{variant} split {split!r} expects batch file '{path}', which does not exist"
                )
            batch = _str_keys(safe_load_pickle(path), path)
            if "data" not in batch or layout["labels_key"] not in batch:
                raise ValueError(f"CIFAR batch '{path}' lacks 'data' or '{layout['labels_key']}'")
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise ValueError(f"CIFAR batch '{path}': data has shape {data.shape}, expected (N, 3072)")
            batch_labels = [int(y) for y in batch[layout["labels_key"]]]
            if len(batch_labels) != data.shape[0]:
                raise ValueError(
                    f"CIFAR batch '{path}': {data.shape[0]} images but {len(batch_labels)} labels"
                )
            arrays.append(data)
            labels.extend(batch_labels)
        self.data: np.ndarray = np.ascontiguousarray(
            np.concatenate(arrays).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        )
        self.targets: list[int] = labels

        meta_path = os.path.join(self.batch_dir, layout["meta"])
        if os.path.isfile(meta_path):
            meta = _str_keys(safe_load_pickle(meta_path), meta_path)
            self.classes = [_as_str(n) for n in meta[layout["names_key"]]]
        else:
            self.classes = [str(i) for i in range(layout["num_classes"])]
        bad = [y for y in labels if not 0 <= y < len(self.classes)]
        if bad:
            raise ValueError(f"{variant}: label {bad[0]} is outside 0..{len(self.classes) - 1}")

    def _find_batch_dir(self, layout: dict[str, Any]) -> str:
        nested = os.path.join(self.root, layout["folder"])
        if os.path.isdir(nested):
            return nested
        first = layout["splits"]["test"][0]
        if os.path.isfile(os.path.join(self.root, first)) or os.path.isfile(
            os.path.join(self.root, layout["meta"])
        ):
            return self.root
        if not os.path.isdir(self.root):
            raise DatasetNotFoundError(f"{self.variant} root '{self.root}' does not exist")
        raise DatasetNotFoundError(
            f"{self.variant}: expected the batch folder '{nested}' (or batch files directly in '{self.root}')"
        )

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img: Any = Image.fromarray(self.data[index])
        if self.transform is not None:
            where = f"#{index} of {self.variant} split {self.split!r} ('{self.batch_dir}')"
            img = apply_transform(self.transform, img, where)
        return img, self.targets[index]

    def __repr__(self) -> str:
        return f"CIFARDataset(variant={self.variant!r}, split={self.split!r}, samples={len(self)})"
