"""Reads the real VTAB-1k-style MNIST task shipped in the shared data folder (skips when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.shared_data import require_shared
from vimtune.data import AugmentConfig, build_dataset, build_eval_transform


@pytest.fixture
def mnist() -> Path:
    return require_shared("vtab-mini", "mnist", marker="train800val200.txt")


def test_shared_vtab_mnist_counts_and_images(mnist: Path) -> None:
    tf = build_eval_transform(AugmentConfig(recipe="none", img_size=32))
    trainval = build_dataset("vtab", str(mnist), "trainval", transform=tf)
    test = build_dataset("vtab", str(mnist), "test")
    assert len(trainval) == 1000
    assert trainval.num_classes == 10 and len(trainval.classes) == 10
    assert len(test) == 2000
    assert sorted(set(test.targets)) == list(range(10))
    x, y = trainval[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    img, _ = test[0]
    assert img.mode == "RGB" and img.size == (28, 28)  # stored as 1-channel PNG, served as RGB
