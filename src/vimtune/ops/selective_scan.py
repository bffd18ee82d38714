"""One selective-scan function with several backends, chosen per device.

Backends (all share the meaning of :func:`selective_scan_reference`):

- ``reference``: sequential PyTorch loop, the oracle.
- ``chunked``: pure PyTorch, vectorised in chunks; any device, autograd backward.
- ``cpu``: fused C++ kernel (when :mod:`vimtune.ops.scan_cpu` is present and compiles).
- ``cuda``: mamba_ssm's fused kernel, when that package imports and runs on this CUDA device.
- ``triton``: the Triton kernels of :mod:`vimtune.ops.triton` (nothing to compile by hand): CUDA tensors,
  or CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, for tests).

Choice: the ``backend`` argument, else the ``VIMTUNE_SCAN_BACKEND`` environment variable,
else automatic: on CUDA ``cuda`` -> ``triton`` -> ``chunked`` (with one warning that it is slow),
on CPU ``cpu`` -> ``chunked``.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from vimtune.ops.scan_chunked import selective_scan_chunked
from vimtune.ops.scan_cuda import cuda_kernel_available, selective_scan_cuda
from vimtune.ops.scan_reference import selective_scan_reference
from vimtune.ops.triton import triton_available

ENV_VAR = "VIMTUNE_SCAN_BACKEND"
BACKENDS = ("reference", "chunked", "cpu", "cuda", "triton")
_AUTO_ORDER = {"cuda": ("cuda", "triton", "chunked"), "cpu": ("cpu", "chunked")}


def _cpu_backend() -> Callable[..., object] | None:
    """The C++ CPU kernel's entry point, or None when it is not installed or cannot build."""
    try:
        module = importlib.import_module("vimtune.ops.scan_cpu")
    except ImportError:
        return None
    return module.selective_scan_cpu if module.cpu_kernel_available() else None


def _backend_available(name: str, device: torch.device) -> bool:
    """Whether backend ``name`` can run on ``device`` (checks only that one: the C++ kernel builds on
    its first check, mamba_ssm runs a tiny call)."""
    if name == "cpu":
        return device.type == "cpu" and _cpu_backend() is not None
    if name == "cuda":
        return cuda_kernel_available(device)
    if name == "triton":
        return triton_available(device)
    return name in ("reference", "chunked")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the backends that can run on ``device`` here."""
    device = torch.device(device)
    return [name for name in BACKENDS if _backend_available(name, device)]


@functools.cache
def _warn_slow_fallback(device: str) -> None:
    """Say once per device that the automatic choice fell back to the pure-PyTorch scan."""
    warnings.warn(
        f"vimtune: neither mamba_ssm's CUDA kernel nor Triton can run on {device}, so the selective scan uses the "
        "pure-PyTorch 'chunked' backend, which is slow (many small kernels, (B, E, L, N) intermediates kept for "
        "autograd). Install a torch build that ships triton, or a working mamba_ssm, for the fused kernels.",
        RuntimeWarning,
        stacklevel=3,
    )


def resolve_backend(device: torch.device | str, backend: str | None = None) -> str:
    """Pick the backend name: explicit argument > environment variable > best for ``device``."""
    choice = backend or os.environ.get(ENV_VAR) or "auto"
    if choice != "auto":
        if choice not in BACKENDS:
            raise ValueError(f"unknown selective-scan backend {choice!r}; expected one of {BACKENDS} or 'auto'")
        if not _backend_available(choice, torch.device(device)):
            raise RuntimeError(
                f"selective-scan backend {choice!r} is not available on {torch.device(device)}; "
                f"available: {available_backends(device)}"
            )
        return choice
    device = torch.device(device)
    order = _AUTO_ORDER.get(device.type, ())
    choice = next((name for name in order if _backend_available(name, device)), "chunked")
    if choice == "chunked" and device.type == "cuda":
        _warn_slow_fallback(str(device))
    return choice


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan (Mamba S6), SPEC-VIM section 3.

    ``delta <- softplus(delta + delta_bias)``; ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``;
    ``y_t = C_t . h_t + D u_t``; ``out_t = y_t * silu(z_t)``.

    Args:
        u: (B, E, L) input. delta: (B, E, L) step sizes. A: (E, N) state matrix (negative).
        B, C: (B, N, L) input-dependent projections. D: (E,) skip. z: (B, E, L) gate.
        delta_bias: (E,). delta_softplus: apply softplus to delta.
        return_last_state: also return the final state (B, E, N).
        backend: one of ``BACKENDS`` or ``"auto"``; None reads ``VIMTUNE_SCAN_BACKEND``.

    Returns:
        out (B, E, L) in the dtype of ``u`` (and the last state when asked).
    """
    name = resolve_backend(u.device, backend)
    kwargs = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                  return_last_state=return_last_state)
    if name == "reference":
        return selective_scan_reference(u, delta, A, B, C, **kwargs)
    if name == "chunked":
        return selective_scan_chunked(u, delta, A, B, C, **kwargs)
    if name == "cuda":
        return selective_scan_cuda(u, delta, A, B, C, **kwargs)
    if name == "triton":
        from vimtune.ops.triton.scan import selective_scan_triton  # imports triton: only when used

        return selective_scan_triton(u, delta, A, B, C, **kwargs)
    cpu_fn = _cpu_backend()
    assert cpu_fn is not None  # resolve_backend checked availability
    return cpu_fn(u, delta, A, B, C, **kwargs)
