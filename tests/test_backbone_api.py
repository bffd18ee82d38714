"""Vim as a timm backbone: forward_intermediates, features_only, pruning, grad checkpointing, layer decay."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.optim import param_groups_layer_decay

import vimtune.models  # noqa: F401 - registers the Vim configs
from vimtune.methods import build

DIM = 192


def tiny(name: str = "vim_tiny_patch16_224", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, depth=3, img_size=64, num_classes=10, **kwargs).eval()


def streams_block_by_block(model: torch.nn.Module, images: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """The residual stream after each block (what the next norm reads), running ``Block.forward`` one by one."""
    hidden, cls_index = model.embed(images)
    residual, streams = None, []
    for layer in model.layers:
        hidden, residual = layer(hidden, residual, cls_index)
        streams.append(residual + hidden)
    return streams, cls_index


def to_grid(tokens: torch.Tensor, cls_index: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, M + 1, D) with the cls token at ``cls_index`` -> (B, D, rows, cols)."""
    patches = torch.cat([tokens[:, :cls_index], tokens[:, cls_index + 1:]], dim=1)
    return patches.reshape(tokens.shape[0], *grid, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize(("name", "size", "grid"), [
    ("vim_tiny_patch16_224", (64, 96), (4, 6)),
    ("vim_tiny_patch16_stride8_224", (48, 80), (5, 9)),
])
def test_intermediates_are_the_residual_stream_after_each_block(name: str, size: tuple[int, int],
                                                                grid: tuple[int, int]) -> None:
    model = tiny(name)
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        streams, cls_index = streams_block_by_block(model, images)
        final, maps = model.forward_intermediates(images, return_prefix_tokens=True)
        tokens = model.forward_intermediates(images, indices=[0, -1], output_fmt="NLC", intermediates_only=True)
    assert cls_index == grid[0] * grid[1] // 2
    assert len(maps) == 3
    for (features, cls), stream in zip(maps, streams, strict=True):
        assert features.shape == (2, DIM, *grid)
        torch.testing.assert_close(features, to_grid(stream, cls_index, grid))
        torch.testing.assert_close(cls, stream[:, cls_index:cls_index + 1])
    for nlc, stream in zip(tokens, [streams[0], streams[-1]], strict=True):
        torch.testing.assert_close(nlc, to_grid(stream, cls_index, grid).flatten(2).transpose(1, 2))
    torch.testing.assert_close(final, model.forward_features(images))


def test_last_normed_intermediate_is_forward_features() -> None:
    model = tiny()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(images)
        (last,) = model.forward_intermediates(images, indices=1, norm=True, intermediates_only=True)
        early = model.forward_intermediates(images, indices=[1], stop_early=True, intermediates_only=True)
        full = model.forward_intermediates(images, indices=[1], intermediates_only=True)
    torch.testing.assert_close(last, to_grid(features, 8, (4, 4)))
    torch.testing.assert_close(early[0], full[0])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(images, output_fmt="NHWC")


def test_intermediates_leave_out_vpt_prompts() -> None:
    model = tiny()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = model.forward_intermediates(images, indices=1, intermediates_only=True, return_prefix_tokens=True)
        build("vpt-shallow", num_tokens=3, position="middle").attach(model, num_classes=10)
        prompted = model.forward_intermediates(images, indices=1, intermediates_only=True,
                                               return_prefix_tokens=True)
    (features, cls), (plain_features, _) = prompted[0], plain[0]
    assert features.shape == plain_features.shape == (1, DIM, 4, 4)
    assert cls.shape == (1, 1, DIM)
    assert not torch.allclose(features, plain_features)  # the prompts took part in the scan


@pytest.mark.parametrize(("name", "stride"), [("vim_tiny_patch16_224", 16), ("vim_tiny_patch16_stride8_224", 8)])
def test_features_only_through_timms_wrapper(name: str, stride: int) -> None:
    full = tiny(name)
    features = timm.create_model(name, depth=3, img_size=64, features_only=True, out_indices=(0, 1)).eval()
    assert features.feature_info.channels() == [DIM, DIM]
    assert features.feature_info.reduction() == [stride, stride]
    assert len(features.model.layers) == 2  # pruned after the last block asked for
    features.model.load_state_dict(full.state_dict(), strict=False)  # its norm and head are pruned
    for size in (64, 96):
        images = torch.randn(2, 3, size, size)
        side = (size - 16) // stride + 1
        with torch.no_grad():
            outs = features(images)
            expected = full.forward_intermediates(images, indices=(0, 1), intermediates_only=True)
        assert [tuple(o.shape) for o in outs] == [(2, DIM, side, side)] * 2
        for out, want in zip(outs, expected, strict=True):
            torch.testing.assert_close(out, want)


def test_prune_intermediate_layers_keeps_the_outputs() -> None:
    model = tiny()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model.forward_intermediates(images, indices=[0, 1], intermediates_only=True)
        kept = model.prune_intermediate_layers([0, 1], prune_norm=True)
        after = model.forward_intermediates(images, indices=[0, 1], intermediates_only=True)
    assert kept == [0, 1] and len(model.layers) == 2
    assert isinstance(model.head, torch.nn.Identity) and isinstance(model.norm_f, torch.nn.Identity)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)


def _grads_and_saved_bytes(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    model = tiny(drop_path_rate=0.2).train()
    model.set_grad_checkpointing(checkpointing)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    torch.manual_seed(5)  # the same drop-path draws in both runs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(images).logsumexp(-1).mean()
    saved_bytes = sum(saved)
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}, saved_bytes


def test_grad_checkpointing_gives_the_same_gradients_and_saves_less() -> None:
    plain, plain_bytes = _grads_and_saved_bytes(False)
    checkpointed, checkpointed_bytes = _grads_and_saved_bytes(True)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)
    assert checkpointed_bytes < plain_bytes / 3


def test_group_matcher_gives_layer_wise_lr_decay() -> None:
    model = tiny()
    scale = {}
    for group in param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5):
        for param in group["params"]:
            scale[param.data_ptr()] = group["lr_scale"]
    named = dict(model.named_parameters())

    def lr_scale(name: str) -> float:
        return scale[named[name].data_ptr()]

    assert lr_scale("pos_embed") == lr_scale("patch_embed.proj.weight") < lr_scale("layers.0.mixer.A_log")
    assert lr_scale("layers.0.mixer.A_log") == pytest.approx(lr_scale("layers.1.mixer.A_log") / 2)
    assert lr_scale("layers.1.mixer.A_log") < lr_scale("layers.2.norm.weight") <= lr_scale("norm_f.weight")
    assert lr_scale("norm_f.weight") < lr_scale("head.weight") == 1.0
