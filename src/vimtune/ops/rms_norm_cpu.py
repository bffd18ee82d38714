"""RMSNorm over the last dimension on CPU through a C++ kernel, forward and backward.

torch's CPU ``rms_norm`` is a composition of elementwise ops and a mean, and autograd differentiates that
composition, so a Vim block's norm made about a dozen passes over its (B, T, D) input per training step.
The kernel, ``csrc/rms_norm_cpu.cpp``, built like :mod:`vimtune.ops.scan_cpu`'s (by
:func:`vimtune.ops._build.load_cpu_extension`; when the build fails, :func:`norm_kernel_available` warns once
and returns False), reads a row once for its sum of squares and once more for the output, and the backward
likewise. :func:`rms_norm` gives float32 and float64 CPU tensors to the kernel and everything else
(other dtypes or devices, forward-mode AD, ``torch.func`` transforms, ``torch.compile`` tracing) to
``F.rms_norm``; a second-order gradient (``create_graph=True``) differentiates ``F.rms_norm``'s composition.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vimtune.ops._build import load_cpu_extension
from vimtune.ops.cpu_linear import _plain_autograd

_SOURCE = Path(__file__).parent / "csrc" / "rms_norm_cpu.cpp"


_ops = functools.cache(lambda: load_cpu_extension("vimtune_norm_cpu", _SOURCE, what="C++ CPU RMSNorm",
                                                   fallback="RMSNorm uses torch's rms_norm."))
"""The extension's ``torch.ops`` namespace, built (or loaded from the cache) on the first call; None on failure."""


def norm_kernel_available() -> bool:
    """True when the C++ RMSNorm kernel is built and loaded (builds it on the first call; never raises)."""
    return _ops() is not None


class _RMSNormCPU(torch.autograd.Function):
    """The kernel's RMSNorm; saves x, the weight and the rows' reciprocal RMS (rows,) for backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        y, rstd = _ops().rms_norm_fwd(x.contiguous(), weight.contiguous(), eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight, rstd = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
            inputs = [t for t, need in ((x, need_x), (weight, need_w)) if need]
            with torch.enable_grad():
                grads = iter(torch.autograd.grad(F.rms_norm(x, (x.shape[-1],), weight, ctx.eps), inputs, dy,
                                                 create_graph=True))
            return next(grads) if need_x else None, next(grads) if need_w else None, None
        dx, dw = _ops().rms_norm_bwd(dy.contiguous(), x.contiguous(), weight.contiguous(), rstd, need_x, need_w)
        # dx is returned as the kernel's own tensor (no view of it), so that autograd may add another
        # gradient of x to it in place
        return dx if need_x else None, dw if need_w else None, None


def _takes_kernel(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`rms_norm` computes ``x`` with the C++ kernel (see the module docstring)."""
    return (
        not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and weight.dtype == x.dtype
        and weight.device.type == "cpu"
        and x.layout == torch.strided
        and x.dim() >= 1
        and x.shape[-1] > 0
        and weight.shape == x.shape[-1:]
        and _plain_autograd(x, weight)
        and norm_kernel_available()
    )


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``F.rms_norm(x, (D,), weight, eps)``: x (..., D), weight (D,) -> (..., D) in x's dtype;
    ``x * rsqrt(mean(x^2, -1) + eps) * weight``, by the C++ kernel for float32 and float64 CPU tensors."""
    if not _takes_kernel(x, weight):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    if torch.is_grad_enabled() and not torch.is_inference_mode_enabled() and (x.requires_grad or weight.requires_grad):
        return _RMSNormCPU.apply(x, weight, eps)
    return _ops().rms_norm_fwd(x.contiguous(), weight.contiguous(), eps)[0]
