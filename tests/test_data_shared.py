"""Reads the real VTAB-1k-style MNIST task shipped in the shared data folder (skips when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vimtune.data import AugmentConfig, build_dataset, build_eval_transform

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST = SHARED_DATA / "vtab-mini" / "mnist"

pytestmark = pytest.mark.skipif(
    not (MNIST / "train800val200.txt").is_file(),
    reason=f"shared VTAB-mini data not found at {MNIST} (only present on the project machine)",
)


def test_shared_vtab_mnist_counts_and_images() -> None:
    tf = build_eval_transform(AugmentConfig(recipe="none", img_size=32))
    trainval = build_dataset("vtab", str(MNIST), "trainval", transform=tf)
    test = build_dataset("vtab", str(MNIST), "test")
    assert len(trainval) == 1000
    assert trainval.num_classes == 10 and len(trainval.classes) == 10
    assert len(test) == 2000
    assert sorted(set(test.targets)) == list(range(10))
    x, y = trainval[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    img, _ = test[0]
    assert img.mode == "RGB" and img.size == (28, 28)  # stored as 1-channel PNG, served as RGB
