"""The bundled CIFAR-10 backbone reproduces the test accuracy its model card states (slow; needs shared data)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.shared_data import require_shared
from vimtune.models.zoo import COMMITTED_WEIGHTS, WEIGHTS_DIR

MODEL = "vim_micro_patch4_32"


def stated_top1(card: Path) -> float:
    """The ``CIFAR-10 test top-1: **NN.NN%**`` figure of a model card written by scripts/export_backbone.py."""
    match = re.search(r"CIFAR-10 test top-1: \*\*([0-9.]+)%\*\*", card.read_text())
    if match is None:
        raise AssertionError(f"{card} states no CIFAR-10 test top-1")
    return float(match.group(1))


@pytest.mark.slow
def test_bundled_backbone_reproduces_its_card(tmp_path: Path) -> None:
    cifar10 = require_shared("cifar10", marker="test")
    weights = WEIGHTS_DIR / COMMITTED_WEIGHTS[MODEL]
    expected = stated_top1(weights.with_suffix(".md"))
    subprocess.run([sys.executable, "-m", "vimtune", "eval", "--checkpoint", str(weights), "--model", MODEL,
                    "--img-size", "32", "--data-kind", "imagefolder", "--data", str(cifar10), "--split", "test",
                    "--output-dir", str(tmp_path)], check=True)
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert result["top1"] == pytest.approx(expected, abs=0.006)
