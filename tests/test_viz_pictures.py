"""The PNGs of ``vimtune viz`` and the training curves: written, and not blank."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import timm
import torch
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

import vimtune.models  # noqa: F401 - registers the Vim configs
from vimtune.engine.plots import save_curves_png
from vimtune.methods import build
from vimtune.viz import figures
from vimtune.viz.capture import collect
from vimtune.viz.gate_change import gate_change, gate_table, read_gate_change
from vimtune.viz.pictures import displayable, make_pictures, patch_gates

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
    drawn = make_pictures(tuned, images, displayable(images, MEAN, STD), tmp_path, method, plain=plain, prefix="x_")
    assert {p.name for p in drawn.files} == {f"x_{name}.png" for name in expected} | {"x_gate_change.json"}
    for path in drawn.files:
        if path.suffix == ".png":
            assert_not_blank(path)
    # the numbers written are those of the gates of the two models, patches only (prompt tokens left out)
    expected_change = gate_change(patch_gates(collect(plain, images)), patch_gates(collect(tuned, images)), method, 2)
    assert read_gate_change(tmp_path / "x_gate_change.json") == drawn.gate_change == expected_change
    assert expected_change.first_quarter > 0 and expected_change.tokens == 49


def test_a_method_that_changes_nothing_has_zero_gate_change(tmp_path: Path) -> None:
    """SVP at attach (zero prompts) computes what the backbone does: any misaligned token or direction shows."""
    plain = _model(None)
    fresh = build("svp", rank=4, group_size=2).attach(_model(None), num_classes=3).eval()
    images = torch.randn(2, 3, 32, 32)
    drawn = make_pictures(fresh, images, displayable(images, MEAN, STD), tmp_path, "svp", plain=plain)
    assert (drawn.gate_change.first_quarter, drawn.gate_change.last_quarter) == (0.0, 0.0)
    assert drawn.gate_change.plain_mean > 0


def test_gate_change_is_the_mean_absolute_change_per_quarter_of_the_tokens() -> None:
    plain = np.full((3, 9), 0.5)
    tuned = plain.copy()
    tuned[0, 0], tuned[0, 1] = 0.7, 0.1  # first quarter (9 // 4 = 2 tokens): |+0.2| + |-0.4|, not a signed 0.2 - 0.4
    tuned[2, 8] = 0.8  # last quarter: 0.3
    tuned[1, 6] = 9.0  # token 6 is in neither quarter
    change = gate_change(plain, tuned, "m", images=4)
    assert change.first_quarter == pytest.approx(0.6 / 6) and change.last_quarter == pytest.approx(0.3 / 6)
    assert (change.plain_mean, change.layers, change.tokens, change.images) == (0.5, 3, 9, 4)
    assert "| m | 1.00e-01 | 5.00e-02 | 0.50 | 5.00e-01 |" in gate_table([change])
    assert "first quarter of the sequence 1.00e-01, last quarter 5.00e-02 (last / first 0.50" in change.line()
    with pytest.raises(ValueError, match="at least 4 patch tokens"):
        gate_change(plain[:, :3], tuned[:, :3], "m", 1)
    with pytest.raises(ValueError, match="one shape"):
        gate_change(plain, tuned[:2], "m", 1)


def _drawn_figures(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Figure]:
    """Every figure of the SVP and VPT pictures of a 3-layer model, kept open instead of saved."""
    kept: list[Figure] = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: kept.append(fig) or Path(path))
    plain = _model(None)
    images = torch.randn(1, 3, 32, 32)
    for method, options in (("svp", {"rank": 4, "group_size": 2}), ("vpt-deep", {"num_tokens": 4})):
        tuned = _model(method, **options)
        tuned.load_state_dict(plain.state_dict(), strict=False)
        make_pictures(tuned, images, displayable(images, MEAN, STD), tmp_path, method, plain=plain)
    return kept


def test_token_and_layer_axes_have_whole_number_ticks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    checked = 0
    for fig in _drawn_figures(monkeypatch, tmp_path):
        fig.canvas.draw()
        for ax in fig.axes:
            for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
                if label == "layer" or label.startswith(("patch token", "token position")):
                    low, high = sorted(axis.get_view_interval())
                    ticks = [t for t in axis.get_ticklocs() if low <= t <= high]
                    assert ticks and all(float(t).is_integer() for t in ticks), (label, ticks)
                    checked += 1
    assert checked >= 10


def test_attention_maps_are_drawn_as_flat_patches_not_blurred(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    heat_layers = [[im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "inferno"]
                   for fig in _drawn_figures(monkeypatch, tmp_path)]
    overlays = [layers for layers in heat_layers if layers]
    assert len(overlays) == 2  # the attention picture of each method
    for layers in overlays:
        assert all(isinstance(im, AxesImage) and im.get_interpolation() == "nearest" for im in layers)


def test_without_a_plain_backbone_there_is_no_gate_comparison(tmp_path: Path) -> None:
    images = torch.randn(1, 3, 32, 32)
    drawn = make_pictures(_model(None), images, displayable(images, MEAN, STD), tmp_path, "full")
    assert [p.name for p in drawn.files] == ["attention.png"] and drawn.gate_change is None
    assert_not_blank(drawn.files[0])


def test_curves_show_every_recorded_series_and_refuse_an_empty_history(tmp_path: Path) -> None:
    history = [{"epoch": e, "lr": 1e-3 / e, "train_loss": 2.0 / e, "train_top1": 30.0 + 10 * e, "val_loss": 2.2 / e,
                "val_top1": 25.0 + 9 * e} for e in range(1, 6)]
    path = save_curves_png(history, tmp_path / "curves.png", title="run")
    assert_not_blank(path)
    with pytest.raises(ValueError, match="history is empty"):
        save_curves_png([], tmp_path / "empty.png")
