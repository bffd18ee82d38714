"""The PNGs of ``vimtune viz`` and the training curves: written, and not blank."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import timm
import torch

import vimtune.models  # noqa: F401 - registers the Vim configs
from vimtune.engine.plots import save_curves_png
from vimtune.methods import build
from vimtune.viz.pictures import displayable, make_pictures

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def assert_not_blank(path: Path) -> None:
    """A real picture: a PNG whose pixels vary (a blank or single-colour canvas has variance 0)."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.std() > 0.05, f"{path.name} looks blank (pixel std {pixels.std():.4f})"
    # more than axes and text: at least a few hundred distinct colours (colour maps, image)
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200, path.name


def _model(method: str | None, **options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vim_tiny_patch16_224", depth=3, embed_dim=32, img_size=32, patch_size=8, stride=4,
                              num_classes=3)
    if method is not None:
        build(method, **options).attach(model, num_classes=3)
        for name, param in model.named_parameters():
            if param.requires_grad and not name.startswith("head."):
                torch.nn.init.normal_(param, std=0.3)  # as if trained: prompts that do something
    return model.eval()


@pytest.mark.parametrize(("method", "options", "expected"), [
    ("svp", {"rank": 4, "group_size": 2}, {"attention", "gates", "svp_prompts"}),
    ("vpt-deep", {"num_tokens": 4}, {"attention", "gates", "vpt_prompt_influence"}),
])
def test_every_picture_of_a_method_is_written_and_not_blank(
    tmp_path: Path, method: str, options: dict, expected: set[str]
) -> None:
    plain = _model(None)
    tuned = _model(method, **options)
    tuned.load_state_dict(plain.state_dict(), strict=False)  # the same backbone under the method
    images = torch.randn(2, 3, 32, 32)
    written = make_pictures(tuned, images, displayable(images, MEAN, STD), tmp_path, method, plain=plain, prefix="x_")
    assert {p.name for p in written} == {f"x_{name}.png" for name in expected}
    for path in written:
        assert_not_blank(path)


def test_without_a_plain_backbone_there_is_no_gate_comparison(tmp_path: Path) -> None:
    images = torch.randn(1, 3, 32, 32)
    written = make_pictures(_model(None), images, displayable(images, MEAN, STD), tmp_path, "full")
    assert [p.name for p in written] == ["attention.png"]
    assert_not_blank(written[0])


def test_curves_show_every_recorded_series_and_refuse_an_empty_history(tmp_path: Path) -> None:
    history = [{"epoch": e, "lr": 1e-3 / e, "train_loss": 2.0 / e, "train_top1": 30.0 + 10 * e, "val_loss": 2.2 / e,
                "val_top1": 25.0 + 9 * e} for e in range(1, 6)]
    path = save_curves_png(history, tmp_path / "curves.png", title="run")
    assert_not_blank(path)
    with pytest.raises(ValueError, match="history is empty"):
        save_curves_png([], tmp_path / "empty.png")
