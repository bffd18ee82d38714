"""Pure-PyTorch chunked selective scan: vectorised inside a chunk, sequential across chunks.

The recurrence ``h_t = a_t h_{t-1} + b_t`` with ``a_t = exp(delta_t A)`` and
``b_t = delta_t B_t u_t`` is solved inside each chunk of K steps by a log-depth (Hillis-Steele)
scan: ceil(log2 K) rounds of ``b_t += a_t b_{t-s}``, ``a_t *= a_{t-s}`` over the whole chunk at
once. Only products of decays are formed (never a division or ``exp`` of a positive number), so it
is stable for any delta and any length; the state carried between chunks enters the first step.
Autograd gives the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vimtune.ops.scan_reference import gate_output, prepare_delta

DEFAULT_CHUNK = 16


def _scan_chunk(
    delta: Tensor, u: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, h: Tensor
) -> tuple[Tensor, Tensor]:
    """One chunk.

    Args:
        delta, u: (B, E, K). A: (E, N). Bm, Cm: (B, N, K). h: (B, E, N) state before the chunk.

    Returns:
        y (B, E, K) without skip/gate, and the state after the chunk (B, E, N).
    """
    a = torch.exp(delta[..., None] * A[None, :, None, :])  # (B, E, K, N)
    b = (delta * u)[..., None] * Bm.transpose(1, 2)[:, None]  # (B, E, K, N)
    b = torch.cat([b[:, :, :1] + a[:, :, :1] * h[:, :, None], b[:, :, 1:]], dim=2)
    length, shift = a.shape[2], 1
    while shift < length:
        b = b + a * F.pad(b[:, :, :-shift], (0, 0, shift, 0))
        if 2 * shift < length:
            a = a * F.pad(a[:, :, :-shift], (0, 0, shift, 0), value=1.0)
        shift *= 2
    y = torch.einsum("bekn,bnk->bek", b, Cm)
    return y, b[:, :, -1]


def selective_scan_chunked(
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
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with the same meaning as :func:`selective_scan_reference`.

    Args:
        u: (B, E, L). delta: (B, E, L). A: (E, N). B, C: (B, N, L). D: (E,). z: (B, E, L).
        delta_bias: (E,). chunk_size: steps per vectorised chunk (autograd keeps ~log2(K) tensors
            of B*E*K*N per chunk).

    Returns:
        out (B, E, L) in the dtype of ``u``; with ``return_last_state`` also (B, E, N).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype_in = u.dtype
    work = torch.promote_types(u.dtype, torch.float32)
    delta = prepare_delta(delta, delta_bias, delta_softplus).to(work)
    u_w, A_w, B_w, C_w = u.to(work), A.to(work), B.to(work), C.to(work)
    batch, channels, length = u.shape
    h = u_w.new_zeros(batch, channels, A.shape[1])
    ys = []
    for start in range(0, length, chunk_size):
        sl = slice(start, start + chunk_size)
        y, h = _scan_chunk(delta[..., sl], u_w[..., sl], A_w, B_w[..., sl], C_w[..., sl], h)
        ys.append(y)
    out = gate_output(torch.cat(ys, dim=-1), u_w, D, z).to(dtype_in)
    return (out, h) if return_last_state else out
