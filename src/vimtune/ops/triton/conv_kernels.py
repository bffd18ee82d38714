"""Triton kernels of the mixer's causal depthwise conv + SiLU in time-major (B, T, E) layout, and their launchers.

Forward direction: ``u[t] = silu(bias + sum_k w[:, k] x[t - (K - 1 - k)])`` (zero before t = 0); ``reverse``:
``u[t] = silu(bias + sum_k w[:, k] x[t + (K - 1 - k)])`` (zero from t = T on), the meaning of
:func:`vimtune.ops.mixer_cpu.causal_conv1d_silu`. The backward recomputes the pre-activations from ``x``:
one kernel writes ``g = dout * silu'(pre)`` and the weight and bias gradients per time block, a second one
gives ``dx`` from ``g``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from vimtune.ops.triton.layout import compute_dtype
from vimtune.ops.triton.math import device_function, sigmoid

GPU_BLOCK_T, GPU_BLOCK_E, GPU_WARPS = 32, 64, 4
INTERPRETER_BLOCK_T, INTERPRETER_BLOCK_E = 64, 256


@device_function
def _source(t, shift, REVERSE: tl.constexpr):
    """The time index a tap ``shift`` steps away reads (later ones for ``REVERSE``)."""
    return t + shift if REVERSE else t - shift


@device_function
def _pre_activation(x_ptr, w_ptr, bias_ptr, b, t, e, length, channels, sx_b, sx_t, sx_e, sw_e, sw_k,
                    REVERSE: tl.constexpr, WIDTH: tl.constexpr, COMPUTE: tl.constexpr):
    """``bias + sum_k w[:, k] x[source(t, K - 1 - k)]`` on a (BLOCK_T, BLOCK_E) tile."""
    e_ok = e < channels
    acc = tl.load(bias_ptr + e, mask=e_ok, other=0.0).to(COMPUTE)[None, :]
    for k in tl.static_range(WIDTH):
        src = _source(t, WIDTH - 1 - k, REVERSE)
        m = ((src >= 0) & (src < length))[:, None] & e_ok[None, :]
        w = tl.load(w_ptr + e * sw_e + k * sw_k, mask=e_ok, other=0.0).to(COMPUTE)
        x = tl.load(x_ptr + b * sx_b + src[:, None] * sx_t + e[None, :] * sx_e, mask=m, other=0.0).to(COMPUTE)
        acc = acc + w[None, :] * x
    return acc


@triton.jit
def _conv_forward_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, length, channels, sx_b, sx_t, sx_e, sw_e, sw_k,
    REVERSE: tl.constexpr, WIDTH: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """``out = silu(pre)``; out is contiguous (B, T, E)."""
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    e = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
    pre = _pre_activation(x_ptr, w_ptr, bias_ptr, b, t, e, length, channels, sx_b, sx_t, sx_e, sw_e, sw_k,
                          REVERSE, WIDTH, COMPUTE)
    mask = (t < length)[:, None] & (e < channels)[None, :]
    out = pre * sigmoid(pre)
    tl.store(out_ptr + (b * length + t[:, None]) * channels + e[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_grad_kernel(
    x_ptr, w_ptr, bias_ptr, dout_ptr, g_ptr, dw_ptr, dbias_ptr, length, channels,
    sx_b, sx_t, sx_e, sw_e, sw_k, sd_b, sd_t, sd_e,
    REVERSE: tl.constexpr, WIDTH: tl.constexpr, PARAM_GRADS: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """``g = dout * silu'(pre)`` into contiguous (B, T, E); with ``PARAM_GRADS`` also this time block's sums
    ``dw[b, blk, k, e] = sum_t g[t] x[source(t, K - 1 - k)]`` and ``dbias[b, blk, e] = sum_t g[t]``."""
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    t = blk * BLOCK_T + tl.arange(0, BLOCK_T)
    e = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
    t_ok, e_ok = t < length, e < channels
    mask = t_ok[:, None] & e_ok[None, :]
    pre = _pre_activation(x_ptr, w_ptr, bias_ptr, b, t, e, length, channels, sx_b, sx_t, sx_e, sw_e, sw_k,
                          REVERSE, WIDTH, COMPUTE)
    dout = tl.load(dout_ptr + b * sd_b + t[:, None] * sd_t + e[None, :] * sd_e, mask=mask, other=0.0).to(COMPUTE)
    s = sigmoid(pre)
    g = tl.where(mask, dout * s * (1.0 + pre * (1.0 - s)), 0.0)
    tl.store(g_ptr + (b * length + t[:, None]) * channels + e[None, :], g, mask=mask)
    if PARAM_GRADS:
        row = b * tl.num_programs(1) + blk
        tl.store(dbias_ptr + row * channels + e, tl.sum(g, axis=0), mask=e_ok)
        for k in tl.static_range(WIDTH):
            src = _source(t, WIDTH - 1 - k, REVERSE)
            m = ((src >= 0) & (src < length))[:, None] & e_ok[None, :]
            x = tl.load(x_ptr + b * sx_b + src[:, None] * sx_t + e[None, :] * sx_e, mask=m, other=0.0).to(COMPUTE)
            tl.store(dw_ptr + (row * WIDTH + k) * channels + e, tl.sum(g * x, axis=0), mask=e_ok)


@triton.jit
def _conv_input_grad_kernel(
    g_ptr, w_ptr, dx_ptr, length, channels, sw_e, sw_k,
    REVERSE: tl.constexpr, WIDTH: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """``dx[s] = sum_k w[:, k] g[t]`` over the t whose tap k reads s; g and dx contiguous (B, T, E)."""
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    e = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_ok = e < channels
    acc = tl.zeros([BLOCK_T, BLOCK_E], dtype=COMPUTE)
    for k in tl.static_range(WIDTH):
        t = _source(s, -(WIDTH - 1 - k), REVERSE)
        m = ((t >= 0) & (t < length))[:, None] & e_ok[None, :]
        w = tl.load(w_ptr + e * sw_e + k * sw_k, mask=e_ok, other=0.0).to(COMPUTE)
        acc += w[None, :] * tl.load(g_ptr + (b * length + t[:, None]) * channels + e[None, :], mask=m, other=0.0)
    mask = (s < length)[:, None] & e_ok[None, :]
    tl.store(dx_ptr + (b * length + s[:, None]) * channels + e[None, :], acc.to(dx_ptr.dtype.element_ty), mask=mask)


def _setup(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, tuple, dict]:
    """(weight as (E, K), launch grid, common constexprs) for x (B, T, E)."""
    batch, length, channels = x.shape
    weight = weight.reshape(channels, -1)
    if x.device.type == "cpu":
        block_t, block_e, warps = INTERPRETER_BLOCK_T, INTERPRETER_BLOCK_E, 1
    else:
        block_t, block_e, warps = GPU_BLOCK_T, GPU_BLOCK_E, GPU_WARPS
    block_t = min(block_t, triton.next_power_of_2(length))
    block_e = min(block_e, triton.next_power_of_2(channels))
    grid = (batch, triton.cdiv(length, block_t), triton.cdiv(channels, block_e))
    compute = compute_dtype(x, weight, bias)
    meta = dict(WIDTH=weight.shape[1], COMPUTE=tl.float64 if compute == torch.float64 else tl.float32,
                BLOCK_T=block_t, BLOCK_E=block_e, num_warps=warps)
    return weight, grid, meta


def conv_forward(x: Tensor, weight: Tensor, bias: Tensor, reverse: bool) -> Tensor:
    """silu of the causal depthwise conv.

    Args:
        x: (B, T, E), any strides. weight: (E, 1, K) or (E, K). bias: (E,). reverse: run backwards in time.

    Returns:
        u (B, T, E), contiguous, in the dtype of x.
    """
    weight, grid, meta = _setup(x, weight, bias)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _conv_forward_kernel[grid](x, weight, bias.contiguous(), out, x.shape[1], x.shape[2], *x.stride(),
                               *weight.stride(), REVERSE=bool(reverse), **meta)
    return out


def conv_backward(
    x: Tensor, weight: Tensor, bias: Tensor, reverse: bool, dout: Tensor, param_grads: bool = True
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gradients of :func:`conv_forward`.

    Args:
        x, weight, bias, reverse: as :func:`conv_forward`. dout: (B, T, E) gradient of u, any strides.
        param_grads: also the weight and bias gradients (skipped for a frozen conv).

    Returns:
        dx (B, T, E) contiguous in the dtype of x; dweight (E, K) and dbias (E,) in the compute dtype, or None.
    """
    batch, length, channels = x.shape
    weight, grid, meta = _setup(x, weight, bias)
    compute = torch.float64 if meta["COMPUTE"] == tl.float64 else torch.float32
    g = torch.empty(x.shape, dtype=compute, device=x.device)
    dw = dbias = None
    if param_grads:
        dw = torch.empty(batch, grid[1], meta["WIDTH"], channels, dtype=compute, device=x.device)
        dbias = torch.empty(batch, grid[1], channels, dtype=compute, device=x.device)
    _conv_grad_kernel[grid](x, weight, bias.contiguous(), dout, g, dw, dbias, length, channels, *x.stride(),
                            *weight.stride(), *dout.stride(), REVERSE=bool(reverse), PARAM_GRADS=param_grads, **meta)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _conv_input_grad_kernel[grid](g, weight, dx, length, channels, *weight.stride(), REVERSE=bool(reverse), **meta)
    if not param_grads:
        return dx, None, None
    return dx, dw.sum((0, 1)).t(), dbias.sum((0, 1))
