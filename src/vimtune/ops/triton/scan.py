"""The ``triton`` backend of :func:`vimtune.ops.selective_scan`: the Triton scan kernels behind autograd."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from vimtune.ops.triton.scan_kernels import scan_backward, scan_forward


def cast_grads(grads: tuple[Tensor | None, ...], inputs: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
    """Each gradient in its input's dtype and shape; None where the input (or the gradient) is None."""
    return tuple(
        None if g is None or t is None else g.to(t.dtype).reshape(t.shape) for g, t in zip(grads, inputs, strict=True)
    )


class _SelectiveScanTriton(torch.autograd.Function):
    """Autograd wrapper; the backward recomputes the states (nothing but the inputs is kept)."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
        z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool, return_last_state: bool, reverse: bool,
        chunk_size: int | None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        D = None if D is None else D.contiguous()
        delta_bias = None if delta_bias is None else delta_bias.contiguous()
        out, last = scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, chunk_size)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.options = (delta_softplus, reverse, chunk_size)
        return (out, last.to(u.dtype)) if return_last_state else out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dout: Tensor, *dlast: Tensor) -> tuple[Tensor | None, ...]:
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        delta_softplus, reverse, chunk_size = ctx.options
        du, ddelta, dz, dA, dB, dC, dD, dbias = scan_backward(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, dout, dlast[0] if dlast else None,
            chunk_size,
        )
        grads = cast_grads((du, ddelta, dA, dB, dC, dD, dz, dbias), (u, delta, A, B, C, D, z, delta_bias))
        return (*grads, None, None, None, None)


def selective_scan_triton(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False, return_last_state: bool = False,
    reverse: bool = False, chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with the Triton kernels; same meaning as the reference.

    Args:
        u: (B, E, L) input. delta: (B, E, L) step sizes. A: (E, N) state matrix.
        B, C: (B, N, L) input-dependent projections. D: (E,) skip. z: (B, E, L) gate.
        delta_bias: (E,). delta_softplus: apply softplus (threshold 20) to ``delta + delta_bias``.
        return_last_state: also return the final state (B, E, N).
        reverse: scan from t = L - 1 down to 0 (the same as flipping every time axis, scanning and
            flipping back; the last state is then the one after t = 0).
        chunk_size: time steps per chunk, a power of two (default
            :data:`vimtune.ops.triton.scan_kernels.DEFAULT_CHUNK`).

    Returns:
        out (B, E, L) in the dtype of ``u`` (and the last state when asked).
    """
    return _SelectiveScanTriton.apply(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reverse, chunk_size
    )
