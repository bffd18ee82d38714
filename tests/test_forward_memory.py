"""What a Vision Mamba forward keeps alive while a mixer runs: only the residual stream of the block loop
(plus the embedded tokens, held by the caller, and the mixer's normalised input), not the previous
mixer output or the previous residual."""

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


def test_mixers_run_with_only_three_token_sized_tensors_alive() -> None:
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
    # Layer 0: the embedded tokens are the residual stream, plus the mixer's input. Later layers: the
    # embedded tokens, the residual stream and the mixer's input; the previous mixer output and
    # residual are gone.
    assert counts == [2, 3, 3, 3]
