"""What a Vision Mamba forward keeps alive while a mixer runs: only the residual stream of the block loop
and the mixer's normalised input, not the previous mixer output, the previous residual or the embedded
tokens."""

from __future__ import annotations

import gc

import timm
import torch

import vimtune.models  # noqa: F401  (registers vim_* with timm)


def _live_storages_of_shape(shape: tuple[int, ...], exclude: set[int]) -> set[int]:
    """Data pointers of the distinct storages behind live tensors of ``shape`` (those in ``exclude`` left out)."""
    gc.collect()
    found = set()
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor) and tuple(obj.shape) == shape:  # type(): no __class__ lookups
            ptr = obj.untyped_storage().data_ptr()
            if ptr not in exclude:
                found.add(ptr)
    return found


def test_mixers_run_with_only_two_token_sized_tensors_alive() -> None:
    torch.manual_seed(0)
    model = timm.create_model("vim_tiny_patch16_224", img_size=64, depth=4).eval()
    images = torch.randn(2, 3, 64, 64)
    shape = (2, 17, model.embed_dim)  # 16 patches + cls
    counts: list[int] = []

    def count(_module: torch.nn.Module, _args: tuple) -> None:
        counts.append(len(_live_storages_of_shape(shape, exclude={images.data_ptr()})))

    handles = [layer.mixer.register_forward_pre_hook(count) for layer in model.layers]
    try:
        with torch.inference_mode():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    # Layer 0: the embedded tokens are the residual stream; later layers: the residual stream alone (the
    # previous mixer output, the previous residual and the embedded tokens are gone). Plus the mixer's input.
    assert counts == [2, 2, 2, 2]
