"""Float32 linear layers on CPU through oneDNN, where torch's default BLAS is slow (non-Intel CPUs with AVX-512).

torch computes a float32 ``F.linear`` on CPU with MKL's sgemm, and MKL chooses its code paths by the
CPU's vendor; oneDNN's inner product, which torch also ships, picks its code by the CPU's ISA flags.
On a 2-core Zen 5 AMD EPYC (the only non-Intel AVX-512 CPU measured so far), at the
shapes of Vim-Ti's mixer at 224 px and batch 8 (1576 rows), MKL computed about 200 GFLOP/s and
oneDNN about 450 (``vimtune bench step --cpu-matmul torch onednn`` times whole models both ways, side by side).

Which one float32 CPU linears use: ``VIMTUNE_CPU_MATMUL`` = ``auto`` (default: oneDNN on CPUs with
AVX-512 whose vendor is not Intel, torch's default elsewhere), ``onednn`` or ``torch``. Products of
fewer than :data:`MIN_MACS` multiply-adds, other dtypes (float64, bfloat16), autocast and other
devices always take ``F.linear``: for small products oneDNN's fixed cost per call (about 15 us)
is larger than what it saves. Both compute float32 sums of products; only the order of the
additions differs, as between thread counts of one BLAS.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import forward_ad

from vimtune.cpuinfo import cpuinfo_fields

ENV_VAR = "VIMTUNE_CPU_MATMUL"
CHOICES = ("auto", "onednn", "torch")
MIN_MACS = 1 << 22
"""Smallest product (rows x in_features x out_features) that goes to oneDNN. On the Zen 5 EPYC, at two
threads, oneDNN was slower up to about 2.4M multiply-adds (32 rows of a 384 -> 192 layer) and faster
from about 4.2M on (64 rows of it, 256 rows of a 384 -> 44 layer)."""


@functools.cache
def _onednn_linear() -> Any | None:
    """torch's oneDNN inner product on strided tensors (``mkldnn::_linear_pointwise``), or None where torch
    has no oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


@functools.cache
def _avx512_outside_intel() -> bool:
    """True on a CPU with AVX-512 whose vendor is not Intel (where MKL was measured at half oneDNN's speed)."""
    fields = cpuinfo_fields()
    return fields.get("vendor_id", "GenuineIntel") != "GenuineIntel" and "avx512f" in fields.get("flags", "").split()


def cpu_matmul_backend() -> str:
    """``"onednn"`` or ``"torch"``: what float32 CPU linears of at least :data:`MIN_MACS` use, by
    ``VIMTUNE_CPU_MATMUL`` (read at each call) and this CPU."""
    choice = os.environ.get(ENV_VAR, "auto")
    if choice not in CHOICES:
        raise ValueError(f"{ENV_VAR}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "onednn" and _onednn_linear() is None:
        raise RuntimeError(f"{ENV_VAR}=onednn, but this torch build has no oneDNN (torch.backends.mkldnn)")
    if choice == "onednn" or (choice == "auto" and _onednn_linear() is not None and _avx512_outside_intel()):
        return "onednn"
    return "torch"


def describe_cpu_matmul() -> str:
    """One line for ``vimtune info``: what float32 CPU linears use here, and why."""
    choice = os.environ.get(ENV_VAR, "auto")
    backend = cpu_matmul_backend()
    if choice != "auto":
        why = f"{ENV_VAR}={choice}"
    elif _onednn_linear() is None:
        why = "auto: this torch build has no oneDNN"
    else:
        why = "auto: " + ("a CPU with AVX-512 not made by Intel" if backend == "onednn" else
                          "an Intel CPU or one without AVX-512, where torch's default is kept")
    target = "oneDNN" if backend == "onednn" else "torch's default (MKL on x86)"
    return f"float32 CPU linears of at least {MIN_MACS:,} multiply-adds: {target} ({why})"


def _plain_matrix(weight: Tensor) -> bool:
    """True for a 2-D weight stored row- or column-major (oneDNN describes no other layout, e.g. overlapping rows)."""
    return weight.dim() == 2 and (weight.is_contiguous() or weight.t().is_contiguous())


def _plain_autograd(*tensors: Tensor | None) -> bool:
    """False under forward-mode AD (a dual level open) or inside a ``torch.func`` transform (wrapped tensors):
    ``F.linear`` has the formulas these need, oneDNN's operator has none."""
    if forward_ad._current_level >= 0:  # private, but the only cheap test; pinned torch (constraints.txt)
        return False
    return not any(t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def _takes_onednn(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether ``linear(x, weight, bias)`` goes to oneDNN (see the module docstring); oneDNN copies an input
    of any other strides to a contiguous one itself. Never while ``torch.compile`` traces: the compiler
    makes its own choice of products (and cannot trace oneDNN's operator)."""
    return (
        not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and x.layout == torch.strided
        and _plain_matrix(weight)
        and x.numel() * weight.shape[0] >= MIN_MACS
        and not torch.is_autocast_enabled("cpu")
        and cpu_matmul_backend() == "onednn"
        and _plain_autograd(x, weight, bias)
    )


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (..., in) @ weight (out, in)^T + bias (out,) -> (..., out), by oneDNN; ``weight`` may be a transpose."""
    return _onednn_linear()(x, weight, bias, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """``F.linear`` with oneDNN products. Saves x for backward only when the weight needs a gradient and the
    weight only when x does, as ``F.linear`` does; its backward is made of :func:`linear` calls, so it is
    differentiable again (double backward)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None)
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = linear(grad, weight.t()) if ctx.needs_input_grad[0] else None  # (..., out) @ (out, in)
        grad_rows = grad.reshape(-1, grad.shape[-1])  # (rows, out)
        grad_weight = _weight_grad(grad_rows, x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        grad_bias = grad_rows.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def _weight_grad(grad_rows: Tensor, x_rows: Tensor) -> Tensor:
    """dL/dweight = grad_rows^T @ x_rows: grad_rows (rows, out), x_rows (rows, in) -> (out, in).

    oneDNN reads its first operand with unit stride over the summed rows, so the product copies one of the
    two transposed, and reads the other in place as a column-major weight. The copied one is the narrower:
    for a LoRA, adapter or SVP up-projection, its (rows, r) input rather than its (rows, out) gradient (the
    result is then a transposed view). The operand read in place is made plain first (an input's rows may
    overlap).
    """
    if grad_rows.shape[1] <= x_rows.shape[1]:
        return linear(grad_rows.t(), x_rows.contiguous().t())
    return linear(x_rows.t(), grad_rows.contiguous().t()).t()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear``: x (..., in), weight (out, in), bias (out,) or None -> (..., out); float32 CPU products
    of at least :data:`MIN_MACS` multiply-adds through oneDNN where :func:`cpu_matmul_backend` says so."""
    if not _takes_onednn(x, weight, bias):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _OneDnnLinear.apply(x, weight, bias)
    return _onednn(x, weight, bias)


torch.fx.wrap("linear")  # a call node in symbolic traces of modules that call it here (its checks read tensors)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict names) computed by :func:`linear`; (..., in) -> (..., out)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
