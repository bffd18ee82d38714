"""Fused C++ selective scan for CPU (forward and backward), compiled on first use.

The kernel, ``csrc/selective_scan_cpu.cpp``, is built by
:func:`vimtune.ops._build.load_cpu_extension` (``torch.utils.cpp_extension.load`` with
``-march=native``) into torch's extensions directory (``TORCH_EXTENSIONS_DIR`` when set) the first
time it is needed and loaded from that cache afterwards. When the build fails,
:func:`cpu_kernel_available` warns once and returns False, and the dispatcher falls back to the
``chunked`` backend.

float32 and float64 inputs are computed in their own precision (float32 sums over many terms -
the gradients of A, B, C, D and delta_bias - are accumulated in float64); other floating dtypes
(bfloat16, float16) are computed in float32 and cast back. The backward recomputes the states
from checkpoints kept every few steps, so its memory grows like B*E*L, not B*E*L*N.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from vimtune.ops._build import load_cpu_extension

_SOURCE = Path(__file__).parent / "csrc" / "selective_scan_cpu.cpp"


@functools.cache
def _ops() -> object | None:
    """Build (or load from the cache) the extension; its ``torch.ops`` namespace, or None on failure."""
    return load_cpu_extension(
        "vimtune_scan_cpu",
        _SOURCE,
        what="C++ CPU selective scan",
        fallback="falling back to the 'chunked' backend.",
    )


def cpu_kernel_available() -> bool:
    """True when the C++ kernel is built and loaded (builds it on the first call; never raises)."""
    return _ops() is not None


@functools.cache
def _layout() -> tuple[int, int]:
    """(channels per vector block W, time steps per checkpoint T) as compiled into the kernel."""
    lanes, steps = _ops().layout()
    return int(lanes), int(steps)


def _work(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` as a contiguous tensor of the compute dtype (no copy when it already is one)."""
    return t.detach().to(dtype).contiguous()


#: Most channel groups per batch row in the backward (tasks of their own, each with a partial of dB and dC).
BACKWARD_GROUPS = 16


def _backward_groups(channel_blocks: int) -> int:
    """Channel groups per batch row in the backward, one task each: :data:`BACKWARD_GROUPS`, at most a
    quarter of the channel blocks (each group keeps a (B, N, L) partial of dB and dC). It does not depend on
    the thread count, so that dB and dC (the groups' float64 partials summed in a fixed order) are the same
    at any thread count. The forward has no such partials and makes every channel block a task."""
    return max(1, min(BACKWARD_GROUPS, channel_blocks // 4))


class _SelectiveScanCPU(torch.autograd.Function):
    """Autograd wrapper: the forward keeps state checkpoints (B, E/W, L/T, N, W) when a gradient will be
    needed, the backward recomputes the states from them. Shapes as in :func:`selective_scan_cpu`."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor | None,
        z: Tensor | None,
        delta_bias: Tensor | None,
        delta_softplus: bool,
        return_last_state: bool,
    ) -> Tensor | tuple[Tensor, Tensor]:
        work = torch.float64 if u.dtype == torch.float64 else torch.float32
        batch, channels, length = u.shape
        n_state = A.shape[1]
        lanes, steps = _layout()
        u_w, delta_w, A_w, B_w, C_w = (_work(t, work) for t in (u, delta, A, B, C))
        D_w = u_w.new_zeros(channels) if D is None else _work(D, work)
        bias_w = u_w.new_zeros(channels) if delta_bias is None else _work(delta_bias, work)
        z_w = None if z is None else _work(z, work)
        channel_blocks = -(-channels // lanes)
        ckpt = None
        if any(ctx.needs_input_grad[:8]):
            ckpt = u_w.new_empty(batch, channel_blocks, -(-length // steps), n_state, lanes)
        out = torch.empty_like(u_w)
        last = u_w.new_empty(batch, channels, n_state)
        _ops().fwd(u_w, delta_w, A_w, B_w, C_w, D_w, bias_w, z_w, delta_softplus, channel_blocks, out, last, ckpt)
        ctx.save_for_backward(u_w, delta_w, A_w, B_w, C_w, D_w, bias_w, z_w, ckpt)
        ctx.delta_softplus = delta_softplus
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias))
        out = out.to(u.dtype)
        return (out, last.to(u.dtype)) if return_last_state else out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dout: Tensor, *dlast: Tensor) -> tuple:
        u, delta, A, B, C, D, bias, z, ckpt = ctx.saved_tensors
        groups = _backward_groups(ckpt.shape[1])
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = None if z is None else torch.empty_like(z)
        f64 = dict(dtype=torch.float64)  # sums over batch rows, time and channels: cast to the inputs' dtypes below
        dA, dD, dbias = (torch.empty_like(t, **f64) for t in (A, D, bias))
        dB, dC = torch.empty_like(B, **f64), torch.empty_like(C, **f64)
        dlast_w = _work(dlast[0], u.dtype) if dlast else None
        _ops().bwd(
            u, delta, A, B, C, D, bias, z, ctx.delta_softplus, groups, ckpt, _work(dout, u.dtype), dlast_w,
            du, ddelta, dz, dA, dB, dC, dD, dbias,
        )
        grads = (du, ddelta, dA, dB, dC, dD, dz, dbias)
        cast = tuple(
            None if dtype is None or g is None else g.to(dtype)
            for g, dtype in zip(grads, ctx.dtypes, strict=True)
        )
        return (*cast, None, None)


def selective_scan_cpu(
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
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan on CPU with the fused C++ kernel; same meaning as the reference.

    Args:
        u: (B, E, L) input. delta: (B, E, L) step sizes. A: (E, N) state matrix.
        B, C: (B, N, L) input-dependent projections. D: (E,) skip. z: (B, E, L) gate.
        delta_bias: (E,). delta_softplus: apply softplus (threshold 20) to ``delta + delta_bias``.
        return_last_state: also return the final state h_L (B, E, N).

    Returns:
        out (B, E, L) in the dtype of ``u``; with ``return_last_state`` also h_L (B, E, N).
    """
    if not cpu_kernel_available():
        raise RuntimeError("the C++ CPU selective-scan kernel is not available on this machine")
    return _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
