"""VisionMamba: configs, parameter counts, timm API, exactness against SPEC-VIM, any input size."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from helpers.spec_vim_forward import vim_forward
from vimtune.models import MODEL_CONFIGS, VisionMamba, create_vim, resize_pos_embed

SPEC_PARAMS = {
    "vim_tiny_patch16_224": 7_148_008,
    "vim_tiny_patch16_stride8_224": 7_250_344,
    "vim_small_patch16_224": 25_796_584,
    "vim_small_patch16_stride8_224": 26_001_256,
    "vim_base_patch16_224": 97_598_440,
}
SPEC_LAYER_KEYS = [
    "A_log", "D", "A_b_log", "D_b", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
    "dt_proj.weight", "dt_proj.bias", "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight",
    "dt_proj_b.weight", "dt_proj_b.bias", "out_proj.weight",
]
SPEC_TOP_KEYS = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                 "head.weight", "head.bias", "norm_f.weight"]


def small_model(**kwargs) -> VisionMamba:
    torch.manual_seed(0)
    defaults = dict(img_size=40, patch_size=8, embed_dim=32, depth=3, num_classes=5)
    return VisionMamba(**{**defaults, **kwargs})


@pytest.mark.parametrize("name", list(SPEC_PARAMS))
def test_released_configs_match_spec_param_counts_and_key_names(name: str) -> None:
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == SPEC_PARAMS[name]
    expected = set(SPEC_TOP_KEYS) | {
        f"layers.{i}.mixer.{k}" for i in range(24) for k in SPEC_LAYER_KEYS
    } | {f"layers.{i}.norm.weight" for i in range(24)}
    assert set(model.state_dict()) == expected and len(expected) == 415


def test_token_counts_of_released_configs() -> None:
    with torch.device("meta"):
        assert timm.create_model("vim_tiny_patch16_224").pos_embed.shape[1] == 197
        assert timm.create_model("vim_small_patch16_stride8_224").pos_embed.shape[1] == 730


def test_kwargs_pass_through_timm() -> None:
    model = timm.create_model("vim_tiny_patch16_224", num_classes=7, img_size=64, depth=3, embed_dim=48,
                              stride=8, drop_path_rate=0.1)
    assert len(model.layers) == 3 and model.embed_dim == 48 and model.num_classes == 7
    assert model.grid_size == (7, 7) and model.pos_embed.shape == (1, 50, 48)
    # [0] + linspace(0, 0.1, 3): blocks get 0, 0, 0.05
    assert isinstance(model.layers[1].drop_path, torch.nn.Identity)
    assert model.layers[2].drop_path.drop_prob == pytest.approx(0.05)
    assert model.drop_path.drop_prob == pytest.approx(0.1)
    assert model.pretrained_cfg["classifier"] == "head"
    assert set(MODEL_CONFIGS) <= set(timm.list_models("vim_*"))


def test_forward_matches_spec_transcription_float64() -> None:
    """Odd patch count (25, cls at 12), three blocks, both directions, fp64: tight agreement."""
    model = small_model().double().eval()
    with torch.no_grad():  # non-trivial values everywhere (head/bias init is zero)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    images = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    expected = vim_forward(sd, images, patch=8, stride=8, depth=3)
    torch.testing.assert_close(model(images), expected, rtol=1e-10, atol=1e-10)


def test_timm_model_api() -> None:
    model = small_model().eval()
    images = torch.randn(2, 3, 40, 40)
    tokens = model.forward_features(images)
    assert tokens.shape == (2, 26, 32)
    assert model.forward_head(tokens, pre_logits=True).shape == (2, 32)
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens[:, 12])
    assert model.forward_head(tokens).shape == (2, 5)
    assert model.num_features == 32 and model.get_classifier() is model.head
    model.reset_classifier(3)
    assert model(images).shape == (2, 3)
    model.reset_classifier(0)
    assert model(images).shape == (2, 32)


def test_other_input_sizes_resize_pos_embed_on_the_fly() -> None:
    model = small_model().eval()
    images = torch.randn(1, 3, 56, 48)  # grid 7 x 6: 42 patches, cls at 21
    out = model(images)
    twin = small_model(img_size=(56, 48)).eval()
    state = model.state_dict()
    state["pos_embed"] = resize_pos_embed(model.pos_embed.detach(), (7, 6))
    twin.load_state_dict(state)
    torch.testing.assert_close(out, twin(images))
    assert model.forward_features(images).shape == (1, 43, 32)
    with pytest.raises(ValueError, match="smaller than one patch"):
        model(torch.randn(1, 3, 4, 40))


def test_stride8_odd_patch_count_runs() -> None:
    model = small_model(img_size=32, patch_size=16, stride=8).eval()
    assert model.grid_size == (3, 3) and model.pos_embed.shape[1] == 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_resize_pos_embed_keeps_cls_slot() -> None:
    grid = torch.arange(16.0).reshape(1, 16, 1).repeat(1, 1, 3)
    cls = torch.full((1, 1, 3), -7.0)
    pos = torch.cat([grid[:, :8], cls, grid[:, 8:]], dim=1)  # 4x4 grid, cls at 8
    out = resize_pos_embed(pos, (6, 6))
    assert out.shape == (1, 37, 3)
    assert torch.equal(out[:, 18], cls[:, 0])
    assert (out[:, torch.arange(37) != 18] != -7.0).all()
    assert resize_pos_embed(pos, (4, 4)) is pos
    constant = torch.ones(1, 17, 2)
    torch.testing.assert_close(resize_pos_embed(constant, (3, 5)), torch.ones(1, 16, 2))


def test_initialisation_follows_spec() -> None:
    model = VisionMamba(img_size=32, patch_size=8, embed_dim=64, depth=4, num_classes=3)
    mixer = model.layers[0].mixer
    torch.testing.assert_close(mixer.A_log[5], torch.log(torch.arange(1.0, 17.0)))
    torch.testing.assert_close(mixer.A_b_log, mixer.A_log)
    assert torch.equal(mixer.D, torch.ones(128)) and torch.equal(mixer.D_b, torch.ones(128))
    for dt_proj in (mixer.dt_proj, mixer.dt_proj_b):
        dt = torch.nn.functional.softplus(dt_proj.bias)
        assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
        assert dt_proj.weight.abs().max() <= math.ceil(64 / 16) ** -0.5
    assert torch.equal(model.head.bias, torch.zeros(3)) and torch.equal(model.patch_embed.proj.bias, torch.zeros(64))
    bound = 1 / math.sqrt(128) / math.sqrt(4)  # kaiming-uniform(a=sqrt 5) bound, then / sqrt(depth)
    assert mixer.out_proj.weight.abs().max() <= bound
    assert mixer.out_proj.weight.abs().max() > bound / 2
    assert {"pos_embed", "cls_token"} <= model.no_weight_decay()


def test_drop_path_is_stochastic_in_train_mode_only() -> None:
    model = small_model(drop_path_rate=0.5)
    images = torch.randn(4, 3, 40, 40)
    model.train()
    torch.manual_seed(1)
    first = model(images)
    torch.manual_seed(2)
    assert not torch.allclose(first, model(images))
    model.eval()
    torch.testing.assert_close(model(images), model(images))


def test_create_vim_unknown_name_and_backbone_bf16() -> None:
    with pytest.raises(KeyError, match="vim_gigantic"):
        create_vim("vim_gigantic")
    model = small_model().eval()
    images = torch.randn(1, 3, 40, 40).to(torch.bfloat16)
    with torch.no_grad():
        expected = model(images.float())
        out = model.to(torch.bfloat16)(images)
    assert out.shape == (1, 5) and out.dtype == torch.bfloat16
    error = (out.float() - expected).abs().max() / expected.abs().max()
    assert error < 0.02, f"bfloat16 backbone off by {error:.2%} of the largest logit (observed about 0.7%)"
