"""scikit-learn's bundled digits (1797 8x8 grayscale images, 10 classes) written as a VTAB-1k-layout task.

The demo trains through the engine's ``vtab`` dataset kind, so the digits become a small task
folder: ``images/NNNN.png`` (8x8 grayscale, values 0..16 scaled to 0..255), the list files
``train800.txt`` and ``test.txt`` (the VTAB-1k file names, whatever their real line counts) and
``classes.txt``. The split is stratified and fixed by its seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vimtune.data import VTAB_SPLIT_FILES

NUM_DIGITS = 1797


def write_digits_task(root: Path, train: int, test: int, seed: int = 0) -> Path:
    """Write ``train`` + ``test`` digits (stratified, disjoint) as a VTAB-layout task at ``root``.

    Args:
        root: the task folder (created; existing list files and images are replaced).
        train, test: images per split, at most 1797 together.
        seed: fixes which images go where.

    Returns:
        ``root``.

    Raises:
        ValueError: sizes that do not fit the 1797 images.
    """
    if min(train, test) < 10 or train + test > NUM_DIGITS:
        raise ValueError(f"digits: train {train} + test {test} must fit the {NUM_DIGITS} images, "
                         "with at least 10 (one per class) in each")
    from sklearn.datasets import load_digits  # here: scikit-learn is slow to import, the CLI imports this module
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    train_index, test_index = train_test_split(
        np.arange(NUM_DIGITS), train_size=train, test_size=test, stratify=labels, random_state=seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, index in (("train", train_index), ("test", test_index)):
        lines = []
        for i in sorted(index.tolist()):
            relative = f"images/{i:04d}.png"
            Image.fromarray(images[i]).save(root / relative)
            lines.append(f"{relative} {labels[i]}\n")
        (root / VTAB_SPLIT_FILES[split]).write_text("".join(lines), encoding="utf-8")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in digits.target_names), encoding="utf-8")
    return root
