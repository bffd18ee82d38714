"""Plain sequential selective scan: the test oracle for every other backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def prepare_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    """Add the per-channel bias and apply softplus (threshold 20), in float32 or wider.

    Args:
        delta: (B, E, L) raw step sizes.
        delta_bias: (E,) or None.
        delta_softplus: apply ``softplus`` when True.

    Returns:
        (B, E, L) step sizes, at least float32.
    """
    delta = delta.to(torch.promote_types(delta.dtype, torch.float32))
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta, beta=1.0, threshold=20.0)
    return delta


def gate_output(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """Add the skip term ``D * u`` and multiply by ``silu(z)``; all tensors (B, E, L) but D (E,)."""
    if D is not None:
        y = y + D.to(y.dtype)[None, :, None] * u.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_reference(
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
    """Selective scan, one time step after the other (slow, exact).

    Args:
        u: (B, E, L) input. delta: (B, E, L). A: (E, N). B, C: (B, N, L).
        D: (E,) skip weight. z: (B, E, L) gate. delta_bias: (E,).

    Returns:
        out (B, E, L) in the dtype of ``u``; with ``return_last_state`` also h_L (B, E, N).
    """
    dtype_in = u.dtype
    work = torch.promote_types(u.dtype, torch.float32)
    delta = prepare_delta(delta, delta_bias, delta_softplus).to(work)
    u_w, A_w, B_w, C_w = u.to(work), A.to(work), B.to(work), C.to(work)
    batch, channels, length = u.shape
    h = u_w.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A_w)  # (B, E, N)
        h = decay * h + (delta[:, :, t] * u_w[:, :, t])[:, :, None] * B_w[:, None, :, t]
        ys.append(torch.einsum("ben,bn->be", h, C_w[:, :, t]))
    y = torch.stack(ys, dim=-1)
    out = gate_output(y, u_w, D, z).to(dtype_in)
    return (out, h) if return_last_state else out
