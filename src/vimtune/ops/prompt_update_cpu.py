"""SVP's prompt update on CPU through a C++ kernel (``csrc/prompt_update_cpu.cpp``), forward and backward.

:class:`vimtune.methods.prompt_update.PromptUpdate` computes ``h + sum_i scale_i * silu(pre_i)`` (one token
left as it is) with this kernel when :func:`takes_kernel` says so: at least one pre-activation, CPU
tensors, ``h`` and the pre-activations float32 or bfloat16 (the pre-activations of one dtype), float32
scales, and no ``torch.compile`` tracing or forward-mode AD; otherwise with torch's ops. Built
like :mod:`vimtune.ops.scan_cpu`'s kernel (:func:`vimtune.ops._build.load_cpu_extension`); when the build
fails, :func:`prompt_kernel_available` warns once and returns False and torch's ops are used.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor

from vimtune.ops._build import load_cpu_extension
from vimtune.ops.cpu_linear import _plain_autograd

_SOURCE = Path(__file__).parent / "csrc" / "prompt_update_cpu.cpp"
_STORED = (torch.float32, torch.bfloat16)


_ops = functools.cache(lambda: load_cpu_extension("vimtune_prompt_cpu", _SOURCE, what="C++ CPU prompt update",
                                                   fallback="SVP's prompt update uses torch's ops."))
"""The extension's ``torch.ops`` namespace, built (or loaded from the cache) on the first call; None on failure."""


def prompt_kernel_available() -> bool:
    """Whether the C++ prompt-update kernel is built and loaded (builds it on the first call; never raises)."""
    return _ops() is not None


def takes_kernel(h: Tensor, keep_token: int | None, pres: tuple[Tensor, ...], scales: tuple[Tensor, ...]) -> bool:
    """Whether the kernel computes this update (see the module docstring); shapes are checked by the caller."""
    tensors = (h, *pres, *scales)
    return (
        len(pres) > 0
        and not torch.compiler.is_compiling()
        and all(t.device.type == "cpu" and t.layout == torch.strided for t in tensors)
        and h.dtype in _STORED
        and pres[0].dtype in _STORED
        and all(p.dtype == pres[0].dtype for p in pres)
        and all(s.dtype == torch.float32 for s in scales)
        and (keep_token is None or h.dim() == 3)
        and h.shape[-1] > 0
        and _plain_autograd(*tensors)
        and prompt_kernel_available()
    )


def _keep_index(h: Tensor, keep_token: int | None) -> int:
    """The kept token as the kernel takes it: in [0, T), or -1 for none."""
    return -1 if keep_token is None else keep_token % h.shape[1]


def prompt_forward(h: Tensor, keep_token: int | None, pres: tuple[Tensor, ...], scales: tuple[Tensor, ...]) -> Tensor:
    """``h + sum_i scales[i] * silu(pres[i])`` in float32, token ``keep_token`` of dim 1 as in ``h``: h, pres
    (..., D) ((B, T, D) with a kept token), scales (D,)."""
    return _ops().prompt_fwd(h.contiguous(), _keep_index(h, keep_token), [p.contiguous() for p in pres],
                             [s.contiguous() for s in scales])


def prompt_backward(
    grad: Tensor, keep_token: int | None, pres: tuple[Tensor, ...], scales: tuple[Tensor, ...], need_pre: bool,
    need_scale: bool,
) -> tuple[list[Tensor | None], list[Tensor | None]]:
    """The gradients of every pre-activation (in its dtype) and every scale (float32) for the float32 output
    gradient ``grad``; None lists' entries for what was not asked for."""
    results = _ops().prompt_bwd(grad.contiguous(), _keep_index(grad, keep_token), [p.contiguous() for p in pres],
                                [s.contiguous() for s in scales], need_pre, need_scale)
    n = len(pres)
    return ([g if need_pre else None for g in results[:n]], [g if need_scale else None for g in results[n:]])
