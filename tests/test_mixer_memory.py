"""Activations the mixer's fast path keeps for backward: with the backbone frozen, the only (B, T, E) sized
storage saved is in_proj's output (the conv input x and z are its column slices); the scan recomputes u
and delta in its backward rather than saving them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import timm
import torch

import vimtune.models  # noqa: F401  (registers vim_* with timm)
from vimtune.models.mamba import BiMambaMixer

pytestmark = pytest.mark.usefixtures("mixer_kernels", "scan_kernel")


@contextmanager
def saved_storages() -> Iterator[dict[int, tuple[int, list[torch.Size]]]]:
    """Record every tensor autograd saves: storage data pointer -> (storage bytes, shapes saved from it)."""
    seen: dict[int, tuple[int, list[torch.Size]]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen.setdefault(storage.data_ptr(), (storage.nbytes(), []))[1].append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen


@contextmanager
def in_proj_outputs(mixers: list[BiMambaMixer]) -> Iterator[set[int]]:
    """Storage data pointers of the in_proj outputs of ``mixers`` during the block."""
    ptrs: set[int] = set()
    handles = [m.in_proj.register_forward_hook(lambda _m, _i, out: ptrs.add(out.untyped_storage().data_ptr()))
               for m in mixers]
    try:
        yield ptrs
    finally:
        for h in handles:
            h.remove()


def _activation_storages(seen: dict, batch: int, length: int, inner: int) -> dict[int, list[torch.Size]]:
    """Saved storages holding a (B, T, E) tensor (the shape of u and delta)."""
    return {ptr: shapes for ptr, (_, shapes) in seen.items() if (batch, length, inner) in shapes}


def test_frozen_mixer_saves_no_u_or_delta() -> None:
    batch, length, d_model = 4, 200, 16
    torch.manual_seed(0)
    mixer = BiMambaMixer(d_model, scan_backend="cpu").requires_grad_(False)  # E = 32, N = 16, R = 1
    inner, rank, state = mixer.d_inner, mixer.dt_rank, mixer.d_state
    hidden = torch.randn(batch, length, d_model, requires_grad=True)
    with in_proj_outputs([mixer]) as in_proj, saved_storages() as seen:
        out = mixer(hidden)
    assert len(in_proj) == 1

    # Only in_proj's output (viewed as x and z) is kept at the (B, T, E) shape of u and delta.
    assert set(_activation_storages(seen, batch, length, inner)) == in_proj

    # Bound from the shapes: in_proj's output (B, T, 2E), both x_proj outputs (B, T, R + 2N), the
    # parameters (saved for the input gradient) and the two A = -exp(A_log) (E, N). The old scan saved
    # u and delta per direction on top: 4 B T E more elements.
    f32 = 4
    bound = f32 * (batch * length * 2 * inner + 2 * batch * length * (rank + 2 * state) + 2 * inner * state)
    bound += sum(p.numel() for p in mixer.parameters()) * f32
    saved = sum(nbytes for nbytes, _ in seen.values())
    assert saved <= bound, f"saved {saved} bytes > bound {bound}"
    assert 4 * batch * length * inner * f32 > bound - saved  # the bound would catch one u or delta kept per direction

    out.sum().backward()  # the recomputing backward works on what was kept
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()


def test_frozen_vim_saves_no_u_or_delta() -> None:
    torch.manual_seed(0)
    model = timm.create_model("vim_nano_patch4_32", scan_backend="cpu", num_classes=10).requires_grad_(False)
    model.train()
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    mixers = [layer.mixer for layer in model.layers]
    with in_proj_outputs(mixers) as in_proj, saved_storages() as seen:
        logits = model(images)
    tokens = (32 // 4) ** 2 + 1  # patches and the class token
    assert len(in_proj) == len(mixers)
    assert set(_activation_storages(seen, 2, tokens, mixers[0].d_inner)) == in_proj
    logits.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
