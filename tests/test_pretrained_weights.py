"""The bundled CIFAR-10 backbone reproduces the test accuracy its model card states (slow; needs shared data)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vimtune.models.zoo import COMMITTED_WEIGHTS, WEIGHTS_DIR

CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"
MODEL = "vim_micro_patch4_32"


def stated_top1(card: Path) -> float:
    """The ``CIFAR-10 test top-1: **NN.NN%**`` figure of a model card written by scripts/export_backbone.py."""
    match = re.search(r"CIFAR-10 test top-1: \*\*([0-9.]+)%\*\*", card.read_text())
    if match is None:
        raise AssertionError(f"{card} states no CIFAR-10 test top-1")
    return float(match.group(1))


@pytest.mark.slow
@pytest.mark.skipif(not (CIFAR10 / "test").is_dir(),
                    reason=f"shared CIFAR-10 test split not found at {CIFAR10 / 'test'} (only on the project machine)")
def test_bundled_backbone_reproduces_its_card(tmp_path: Path) -> None:
    weights = WEIGHTS_DIR / COMMITTED_WEIGHTS[MODEL]
    expected = stated_top1(weights.with_suffix(".md"))
    subprocess.run([sys.executable, "-m", "vimtune", "eval", "--checkpoint", str(weights), "--model", MODEL,
                    "--img-size", "32", "--data-kind", "imagefolder", "--data", str(CIFAR10), "--split", "test",
                    "--output-dir", str(tmp_path)], check=True)
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert result["top1"] == pytest.approx(expected, abs=0.006)
