"""Checks of the Triton kernels against float64 references: on CUDA when there is one, else on CPU tensors under
Triton's interpreter. Not collected by the default run (the interpreter must be switched on before the kernels
are imported, so this file runs in its own process): ``tests/test_triton_backend.py`` runs it with
``TRITON_INTERPRET=1``, and the GPU script runs it directly (``python -m pytest tests/triton_checks.py``).
Shapes are tiny because the interpreter runs every kernel step as numpy calls.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

pytest.importorskip("triton")

import timm  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import vimtune.models  # noqa: E402, F401  (registers vim_* with timm)
from helpers.scan_cases import make_scan_inputs  # noqa: E402
from vimtune.models.mamba import BiMambaMixer  # noqa: E402
from vimtune.ops import available_backends, resolve_backend, selective_scan  # noqa: E402
from vimtune.ops.scan_reference import selective_scan_reference  # noqa: E402
from vimtune.ops.triton.mixer import bimamba_forward_triton, conv1d_silu_triton  # noqa: E402
from vimtune.ops.triton.scan import selective_scan_triton  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SCAN_KEYS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, name: str) -> None:
    """|actual - expected| <= rtol * max|expected| elementwise (and rtol relative)."""
    atol = rtol * max(expected.abs().max().item(), 1e-30)
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol,
                               msg=lambda m: f"{name}: {m}")


def _reference_scan(reverse: bool, **inputs):
    """The float64 oracle; ``reverse`` by flipping every time axis around it (out and last state)."""
    flip = (lambda t: None if t is None else t.flip(-1)) if reverse else (lambda t: t)
    args = {k: flip(v) if k in ("u", "delta", "B", "C", "z") else v for k, v in inputs.items()}
    out, last = selective_scan_reference(**args, return_last_state=True)
    return flip(out), last


@pytest.mark.parametrize(
    "shape, reverse, optional, softplus, chunk",
    [
        ((1, 3, 1, 4), False, True, True, 4),  # length 1
        ((2, 5, 7, 3), False, True, True, 4),  # two chunks, the second one short; N not a power of two
        ((2, 4, 9, 4), True, True, True, 4),  # reverse over three chunks
        ((1, 3, 6, 2), True, False, False, 2),  # no D, z, bias, softplus
        ((2, 3, 5, 4), False, True, True, None),  # the default chunk (one short chunk)
    ],
)
def test_scan_float64_matches_reference(shape, reverse, optional, softplus, chunk) -> None:
    """Forward, last state and all eight gradients (the last state's cotangent included) in float64."""
    leaves = {k: v.to(DEVICE).requires_grad_() for k, v in make_scan_inputs(*shape, with_optional=optional).items()
              if v is not None}
    out, last = selective_scan_triton(**leaves, delta_softplus=softplus, return_last_state=True, reverse=reverse,
                                      chunk_size=chunk)
    ref_leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    ref_out, ref_last = _reference_scan(reverse, **ref_leaves, delta_softplus=softplus)
    _close(out, ref_out, 1e-10, "out")
    _close(last, ref_last, 1e-10, "last state")
    g = torch.Generator().manual_seed(3)
    d_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(DEVICE)
    d_last = torch.randn(last.shape, generator=g, dtype=torch.float64).to(DEVICE)
    got = torch.autograd.grad((out * d_out).sum() + (last * d_last).sum(), list(leaves.values()))
    want = torch.autograd.grad((ref_out * d_out).sum() + (ref_last * d_last).sum(), list(ref_leaves.values()))
    for name, a, b in zip(leaves, got, want, strict=True):
        _close(a, b, 1e-9, f"d{name}")


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_low_precision_matches_float64(dtype, rtol, reverse) -> None:
    """float32 and bfloat16 inputs (float32 state) against the float64 reference, through the dispatcher."""
    inputs = make_scan_inputs(2, 6, 11, 4, seed=5)
    leaves = {k: v.to(DEVICE, dtype).requires_grad_() for k, v in inputs.items()}
    ref_leaves = {k: v.to(DEVICE, dtype).double().requires_grad_() for k, v in inputs.items()}  # same rounded values
    if reverse:
        out = selective_scan_triton(**leaves, delta_softplus=True, reverse=True, chunk_size=4)
    else:
        out = selective_scan(**leaves, delta_softplus=True, backend="triton")
    ref, _ = _reference_scan(reverse, **ref_leaves, delta_softplus=True)
    assert out.dtype == dtype
    _close(out, ref, rtol, "out")
    d_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    got = torch.autograd.grad(out, list(leaves.values()), d_out.to(dtype))
    want = torch.autograd.grad(ref, list(ref_leaves.values()), d_out.double())
    for name, a, b in zip(leaves, got, want, strict=True):
        assert a.dtype == dtype
        _close(a, b, rtol * 4, f"d{name}")


def _conv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, reverse: bool) -> torch.Tensor:
    """silu(nn.Conv1d(padding=K-1)(x)[..., :T]) on (B, T, E), run on the flipped sequence when reverse."""
    x = x.flip(1) if reverse else x
    channels, width = weight.shape[0], weight.shape[-1]
    u = F.conv1d(x.transpose(1, 2), weight.view(channels, 1, width), bias, padding=width - 1, groups=channels)
    u = F.silu(u[..., : x.shape[1]]).transpose(1, 2)
    return u.flip(1) if reverse else u


@pytest.mark.parametrize("length, reverse, frozen", [(1, False, False), (6, False, False), (7, True, False),
                                                      (5, True, True)])
def test_conv_float64_matches_reference(length: int, reverse: bool, frozen: bool) -> None:
    """Conv + SiLU on a column slice of a wider tensor (strided, as the mixer passes it): out, dx, dweight, dbias."""
    g = torch.Generator().manual_seed(length)
    base = torch.randn(2, length, 10, generator=g, dtype=torch.float64).to(DEVICE)
    x = base[..., 2:7].requires_grad_()
    weight = torch.randn(5, 1, 4, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(not frozen)
    bias = torch.randn(5, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(not frozen)
    out = conv1d_silu_triton(x, weight, bias, reverse)
    ref = _conv_reference(x, weight, bias, reverse)
    _close(out, ref, 1e-12, "out")
    d_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(DEVICE)
    leaves = [x] if frozen else [x, weight, bias]
    for name, a, b in zip(("dx", "dweight", "dbias"), torch.autograd.grad(out, leaves, d_out),
                          torch.autograd.grad(ref, leaves, d_out), strict=False):
        _close(a, b, 1e-11, name)


def _mixer_pair(dtype: torch.dtype) -> tuple[BiMambaMixer, BiMambaMixer]:
    torch.manual_seed(0)
    ref = BiMambaMixer(8, d_state=4, scan_backend="reference").to(DEVICE, dtype)
    with torch.no_grad():  # D, A and dt away from their initial values, so that their gradients matter
        for p in (ref.D, ref.D_b, ref.A_log, ref.A_b_log, ref.dt_proj.bias, ref.dt_proj_b.bias):
            p.add_(torch.randn_like(p) * 0.3)
    fast = BiMambaMixer(8, d_state=4, scan_backend="triton").to(DEVICE, dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def test_mixer_float64_matches_reference_path() -> None:
    """The Triton mixer path (time-major, recompute in backward) vs the generic path on the reference scan."""
    ref, fast = _mixer_pair(torch.float64)
    hidden = torch.randn(2, 6, 8, dtype=torch.float64, device=DEVICE)
    out_ref, out_fast = ref(hidden), bimamba_forward_triton(fast, hidden)
    _close(out_fast, out_ref, 1e-11, "out")
    d_out = torch.randn_like(out_ref)
    out_ref.backward(d_out)
    out_fast.backward(d_out)
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters(), strict=True):
        _close(p_fast.grad, p_ref.grad, 1e-9, f"grad {name}")


def test_vim_triton_backend_matches_cpu_backend() -> None:
    """A whole small Vim (float32) built with scan_backend="triton" vs the same weights on the CPU: the ``cpu``
    backend where its kernels build (under the interpreter), else and on a GPU machine ``chunked`` (no C++ build
    there): logits and every parameter gradient."""
    kwargs = dict(img_size=8, patch_size=4, embed_dim=16, depth=1, num_classes=3)
    base = "cpu" if DEVICE.type == "cpu" and "cpu" in available_backends("cpu") else "chunked"
    torch.manual_seed(0)
    want = timm.create_model("vim_nano_patch4_32", scan_backend=base, **kwargs)
    got = timm.create_model("vim_nano_patch4_32", scan_backend="triton", **kwargs).to(DEVICE)
    got.load_state_dict(want.state_dict())
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    logits_want, logits_got = want(images), got(images.to(DEVICE))
    _close(logits_got, logits_want, 1e-4, "logits")
    logits_want.square().sum().backward()
    logits_got.square().sum().backward()
    for (name, p_want), p_got in zip(want.named_parameters(), got.parameters(), strict=True):
        _close(p_got.grad, p_want.grad, 1e-3, f"grad {name}")


def test_triton_is_explicit_on_cpu_and_listed() -> None:
    """Under the interpreter ``triton`` is available on CPU, but the automatic choice there stays C++/chunked;
    on CUDA without a working mamba_ssm the automatic choice is ``triton``."""
    assert "triton" in available_backends(DEVICE)
    if DEVICE.type == "cpu":
        assert resolve_backend("cpu") in ("cpu", "chunked")
    elif "cuda" not in available_backends(DEVICE):
        assert resolve_backend(DEVICE) == "triton"
