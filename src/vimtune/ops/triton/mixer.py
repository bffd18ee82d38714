"""The bidirectional Vim mixer on the Triton kernels (CUDA, or CPU under the interpreter), time-major.

As the CPU path (:mod:`vimtune.ops.mixer_cpu`): ``x`` and ``z`` are column slices of ``in_proj``'s (B, T, 2E)
output and ``B``, ``C`` of ``x_proj``'s, passed to the kernels with their strides (no copies); the backward
direction runs in original time order (no flips); and for backward the scan keeps neither its input ``u``
nor ``delta``: it recomputes ``u`` with the conv kernel and ``delta = dt @ dt_proj.weight^T``. The scan keeps
no states either: its backward recomputes the chunk checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from vimtune.ops.triton.conv_kernels import conv_backward, conv_forward
from vimtune.ops.triton.scan import cast_grads
from vimtune.ops.triton.scan_kernels import scan_backward, scan_forward

if TYPE_CHECKING:
    from vimtune.models.mamba import BiMambaMixer


class _ConvSiLU(torch.autograd.Function):
    """Autograd wrapper of the conv kernels; the backward recomputes the pre-activations from ``x``."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor, reverse: bool) -> Tensor:
        ctx.save_for_backward(x, weight, bias)
        ctx.reverse = reverse
        return conv_forward(x, weight, bias, reverse)

    @staticmethod
    def backward(ctx: FunctionCtx, dout: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        grads = conv_backward(x, weight, bias, ctx.reverse, dout, ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
        return (*cast_grads(grads, (x, weight, bias)), None)


def conv1d_silu_triton(x: Tensor, weight: Tensor, bias: Tensor, reverse: bool = False) -> Tensor:
    """:func:`vimtune.ops.mixer_cpu.causal_conv1d_silu` on the Triton kernels: x (B, T, E), weight (E, 1, K)
    or (E, K), bias (E,) -> u (B, T, E) contiguous in the dtype of x."""
    return _ConvSiLU.apply(x, weight, bias, reverse)


class _ScanRecompute(torch.autograd.Function):
    """The time-major scan with ``delta = dt @ dt_weight^T`` formed inside it; saves neither u nor delta."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, u: Tensor, dt: Tensor, dt_weight: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
        z: Tensor, delta_bias: Tensor, conv_x: Tensor, conv_weight: Tensor, conv_bias: Tensor, reverse: bool,
    ) -> Tensor:
        delta = dt @ dt_weight.t()  # (B, T, E), under the caller's autocast; freed on return
        D, delta_bias = D.contiguous(), delta_bias.contiguous()
        out = torch.empty_like(u, memory_format=torch.contiguous_format)  # (B, T, E); returned, not a view
        scan_forward(u.mT, delta.mT, A, B.mT, C.mT, D, z.mT, delta_bias, True, reverse, out=out.mT)
        ctx.save_for_backward(dt, dt_weight, A, B, C, D, z, delta_bias, conv_x, conv_weight, conv_bias)
        ctx.dtypes = (u.dtype, delta.dtype)
        ctx.reverse = reverse
        return out

    @staticmethod
    def backward(ctx: FunctionCtx, dout: Tensor) -> tuple[Tensor | None, ...]:
        dt, dt_weight, A, B, C, D, z, delta_bias, conv_x, conv_weight, conv_bias = ctx.saved_tensors
        (u_dtype, delta_dtype), reverse = ctx.dtypes, ctx.reverse
        u = conv_forward(conv_x, conv_weight, conv_bias, reverse).to(u_dtype)  # as in the forward
        delta = dt.to(delta_dtype) @ dt_weight.to(delta_dtype).t()  # the forward's product, autocast or not
        du, ddelta, dz, dA, dB, dC, dD, dbias = scan_backward(
            u.mT, delta.mT, A, B.mT, C.mT, D, z.mT, delta_bias, True, reverse, dout.mT
        )
        del u, delta
        ddelta_rows = ddelta.mT.flatten(0, 1).to(dA.dtype)  # (B * T, E)
        d_dt = d_weight = None
        if ctx.needs_input_grad[1]:
            d_dt = (ddelta_rows @ dt_weight.to(dA.dtype)).view(dt.shape)
        if ctx.needs_input_grad[2]:
            d_weight = ddelta_rows.t() @ dt.flatten(0, 1).to(dA.dtype)
        grads = cast_grads((du.mT, d_dt, d_weight, dA, dB.mT, dC.mT, dD, dz.mT, dbias),
                           (dout, dt, dt_weight, A, B, C, D, z, delta_bias))
        return (*grads, None, None, None, None)


def _direction(mixer: BiMambaMixer, x: Tensor, z: Tensor, reverse: bool) -> Tensor:
    """One direction of the mixer on the Triton kernels (the ``_b`` modules when ``reverse``).
    x, z: (B, T, E) -> y (B, T, E), in original time order."""
    if reverse:
        conv, x_proj, dt_proj, A_log, D = mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log, mixer.D_b
    else:
        conv, x_proj, dt_proj, A_log, D = mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D
    u = conv1d_silu_triton(x, conv.weight, conv.bias, reverse)
    dt, Bm, Cm = x_proj(u).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)  # column slices
    A = -torch.exp(A_log.to(torch.promote_types(A_log.dtype, torch.float32)))
    return _ScanRecompute.apply(u, dt, dt_proj.weight, A, Bm, Cm, D, z, dt_proj.bias, x, conv.weight, conv.bias,
                                reverse)


def bimamba_forward_triton(mixer: BiMambaMixer, hidden: Tensor) -> Tensor:
    """:meth:`BiMambaMixer.forward` on the Triton kernels: hidden (B, T, D) -> (B, T, D).

    ``in_proj``, ``x_proj``, ``x_proj_b`` and ``out_proj`` are called as modules (wrapped ones such as
    LoRA's work); the conv and ``dt_proj`` weights are read as tensors.
    """
    x, z = mixer.in_proj(hidden).split(mixer.d_inner, dim=-1)  # (B, T, E) column slices
    y = _direction(mixer, x, z, reverse=False)
    return mixer.out_proj(y.add_(_direction(mixer, x, z, reverse=True)).div_(2))
