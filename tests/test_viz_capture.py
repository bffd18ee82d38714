"""``vimtune.viz.capture``: per-layer gates, cls attention and prompt sizes gathered by hooks, at any resolution."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

import vimtune.models  # noqa: F401 - registers the Vim configs
from vimtune.methods import build
from vimtune.models.vim import VisionMamba
from vimtune.viz.capture import collect, token_layout


def _tiny(img_size: int = 32, stride: int | None = None, depth: int = 2) -> VisionMamba:
    torch.manual_seed(0)
    return timm.create_model("vim_tiny_patch16_224", depth=depth, embed_dim=32, img_size=img_size, patch_size=8,
                             stride=stride, num_classes=3)


@pytest.mark.parametrize(("size", "stride", "grid"), [(32, 8, (4, 4)), (32, 4, (7, 7)), (48, 8, (6, 6)),
                                                       (40, 4, (9, 9))])
def test_maps_have_one_value_per_layer_and_token_at_any_resolution_and_stride(
    size: int, stride: int, grid: tuple[int, int]
) -> None:
    model = _tiny(32, stride, depth=3)  # built for 32 px: other sizes resize the position embedding
    images = torch.randn(2, 3, size, size)
    got = collect(model, images, full_maps=True)
    length = grid[0] * grid[1] + 1
    assert got.layout.grid == grid and got.layout.length == length and got.layout.cls_index == (length - 1) // 2
    assert got.gate.shape == (3, 2, 2, length) and (got.gate > 0).all()
    assert got.cls_attention.shape == (3, 2, length) and got.attention.shape == (3, 2, length, length)
    assert got.layout.to_grid(got.cls_attention).shape == (3, 2, *grid)
    assert got.prompt_magnitude is None and got.logits.shape == (2, 3)
    # the row of the cls token, computed alone, is that row of the whole map (both directions in token order)
    torch.testing.assert_close(got.attention[:, :, got.layout.cls_index], got.cls_attention, rtol=1e-5, atol=1e-7)
    # the forward scan reads only earlier tokens, the backward one only later ones: the combined map is full
    assert torch.count_nonzero(got.attention[0, 0].triu(1)) > 0 and torch.count_nonzero(got.attention[0, 0].tril(-1))


def test_collecting_leaves_the_model_as_it_was() -> None:
    model = _tiny().train()
    images = torch.randn(2, 3, 32, 32)
    backends = [layer.mixer.scan_backend for layer in model.layers]
    got = collect(model, images)
    assert model.training and [layer.mixer.scan_backend for layer in model.layers] == backends
    assert not any(layer.mixer.x_proj._forward_hooks for layer in model.layers)
    torch.testing.assert_close(got.logits, model.eval()(images), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("position", "prompts", "cls_index"),
                         [("prefix", [0, 1, 2], 11), ("middle", [8, 9, 11], 10), ("suffix", [17, 18, 19], 8)])
def test_vpt_prompt_tokens_are_located_in_the_sequence(position: str, prompts: list[int], cls_index: int) -> None:
    model = build("vpt-deep", num_tokens=3, position=position).attach(_tiny(), num_classes=3)
    layout = token_layout(model, 32, 32)
    assert layout.length == 20 and layout.cls_index == cls_index
    assert layout.prompt_index.tolist() == prompts
    patches = layout.patch_index.tolist()
    assert len(patches) == 16 and patches == sorted(patches)
    assert not set(patches) & {*prompts, cls_index}
    got = collect(model, torch.randn(1, 3, 32, 32), full_maps=True)
    assert got.gate.shape[-1] == 20 and got.layout.to_grid(got.cls_attention).shape == (2, 1, 4, 4)


def test_svp_prompt_magnitude_is_zero_at_attach_and_never_on_the_cls_token() -> None:
    model = build("svp", rank=4, group_size=1).attach(_tiny(), num_classes=3)
    images = torch.randn(2, 3, 32, 32)
    fresh = collect(model, images)
    assert fresh.prompt_magnitude.shape == (2, 2, 17) and torch.count_nonzero(fresh.prompt_magnitude) == 0
    assert (fresh.token_norm > 0).all()
    tuned = copy.deepcopy(model)
    torch.nn.init.normal_(tuned.svp.beta, std=0.5)
    got = collect(tuned, images)
    cls = got.layout.cls_index
    assert (got.prompt_magnitude[:, :, cls] == 0).all()
    assert (got.layout.patches(got.prompt_magnitude) > 0).all()
    # the prompts change what the scans see, hence their gates
    assert not torch.allclose(got.gate[1], fresh.gate[1])
