"""Dense prediction on Vim features, plain ``import vimtune`` registering with timm, a torch-free ``--help``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import vimtune.models  # noqa: F401 - registers the Vim configs
from vimtune.models.dense_head import SegmentationHead

SRC = Path(__file__).resolve().parents[1] / "src"


def squares(count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images (N, 3, size, size) with one brighter square each, and its mask (N, size, size) as labels 0/1."""
    images = torch.randn(count, 3, size, size, generator=generator) * 0.3
    masks = torch.zeros(count, size, size, dtype=torch.long)
    for i in range(count):
        side = int(torch.randint(size // 4, size // 2, (1,), generator=generator))
        top, left = (int(v) for v in torch.randint(0, size - side, (2,), generator=generator))
        masks[i, top:top + side, left:left + side] = 1
        images[i, :, top:top + side, left:left + side] += 1.0
    return images, masks


def test_segmentation_head_learns_on_generated_masks() -> None:
    torch.manual_seed(0)
    backbone = timm.create_model("vim_nano_patch4_32", depth=2, embed_dim=32, num_classes=0)
    head = SegmentationHead(backbone, num_classes=2, indices=(0, 1), channels=16)
    images, masks = squares(8, 32, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        logits = head(images)
        assert logits.shape == (8, 2, 32, 32)
        loss = F.cross_entropy(logits, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def run_python(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter with this checkout's sources; it prints one JSON line."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("order", ["vimtune first", "timm first"])
def test_plain_import_registers_with_timm(order: str) -> None:
    imports = "import vimtune, timm" if order == "vimtune first" else "import timm, vimtune"
    result = run_python(f"""
import json, sys
{imports}
print(json.dumps({{"models": timm.list_models("vim_*"), "cfg": timm.models.get_pretrained_cfg(
    "vim_small_patch16_224").hf_hub_filename}}))
""")
    assert {"vim_small_patch16_224", "vim_tiny_patch16_stride8_224", "vim_micro_patch4_32"} <= set(result["models"])
    assert result["cfg"] == "vim_s_midclstok_80p5acc.pth"


@pytest.mark.parametrize(("argv", "expected"), [
    (["--help"], "finetune"),
    (["--version"], "vimtune "),
    (["finetune", "--help"], "--backbone-weights"),
    (["train", "--help"], "--resume"),
    (["eval", "--help"], "best-test"),
    (["predict", "--help"], "--topk"),
    (["report", "--help"], "--images"),
    (["viz", "--help"], "--checkpoint"),
    (["info", "--help"], "usage: vimtune info"),
    (["methods", "--help"], "--num-classes"),
    (["demo", "--help"], "--train-size"),
    (["bench", "transfer", "--help"], "--lr-factors"),
])
def test_help_and_version_do_not_import_torch(argv: list[str], expected: str) -> None:
    result = run_python(f"""
import contextlib, io, json, sys
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        from vimtune.cli import main
        main({argv!r})
    except SystemExit as stop:
        code = stop.code
heavy = sorted(m for m in ("torch", "timm", "numpy", "vimtune.models") if m in sys.modules)
print(json.dumps({{"code": code, "out": out.getvalue(), "heavy": heavy}}))
""")
    assert result["code"] == 0 and result["heavy"] == []
    assert expected in result["out"]
