"""The implicit attention of a selective scan (Ali, Zimerman, Wolf, "The Hidden Attention of Mamba Models", 2024).

Unrolling ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, ``y_t = C_t . h_t`` gives ``y_t = sum_s alpha[t, s] u_s``
with, per batch element and channel::

    alpha[t, s] = sum_n C[n, t] * exp(sum_{k=s+1..t} delta_k A[n]) * delta_s * B[n, s]   (s <= t; 0 for s > t)

The decay is computed from the cumulative sums ``cs_t = sum_{k<=t} delta_k A`` (float64) as ``exp(cs_t - cs_s)``,
an exponent that is never positive because ``A < 0`` and ``delta > 0``. Query rows are computed in blocks: the keys
of earlier blocks through one matrix product per block, split at the block's first row ``r``
(``exp(cs_t - cs_s) = exp(cs_t - cs_{r-1}) * exp(cs_{r-1} - cs_s)``, both factors at most 1), the keys inside the
block directly, masked before the exponential. Channels are chunked so that at most about
:data:`BLOCK_ELEMENTS` values of a block exist at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vimtune.ops.scan_reference import prepare_delta

BLOCK_ELEMENTS = 1 << 24
"""About how many values of a (batch, channels, rows, keys) block are computed at once."""


def _check(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    batch, channels, length = u.shape
    expected = {"delta": (delta, (batch, channels, length)), "A": (A, (channels, A.shape[-1])),
                "B": (B, (batch, A.shape[-1], length)), "C": (C, (batch, A.shape[-1], length))}
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"hidden_attention: {name} must be {shape} for u {tuple(u.shape)} and A "
                             f"{tuple(A.shape)}, got {tuple(tensor.shape)}")


class _ScanTerms:
    """What every block needs for the channels ``lo:hi``: cumulative decays, ``delta * B`` and ``C``.

    ``cs`` (B, e, N, T) float64; ``weighted_B`` (B, e, N, T) = ``delta_s * B[n, s]``; ``C`` (B, 1, N, T).
    """

    def __init__(self, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, work: torch.dtype) -> None:
        wide = delta.to(torch.float64)
        self.cs = torch.cumsum(wide[:, :, None, :] * A.to(torch.float64)[None, :, :, None], dim=-1)
        self.weighted_B = delta.to(work)[:, :, None, :] * B.to(work)[:, None, :, :]
        self.C = C.to(work)[:, None, :, :]
        self.work = work

    def rows(self, first: int, last: int) -> Tensor:
        """alpha for query rows ``first:last`` against keys ``0:last`` -> (B, e, last - first, last)."""
        cs, work = self.cs, self.work
        rows = cs[..., first:last]  # (B, e, N, Q)
        inside = rows[..., :, None] - rows[..., None, :]  # (B, e, N, Q, Q): cs_t - cs_s
        causal = torch.ones(last - first, last - first, dtype=torch.bool, device=cs.device).tril()
        decay = torch.exp(torch.where(causal, inside, float("-inf"))).to(work)
        block = torch.einsum("bhnq,bhnqs,bhns->bhqs", self.C[..., first:last].expand_as(decay[..., 0]), decay,
                             self.weighted_B[..., first:last])
        if first == 0:
            return block
        split = cs[..., first - 1:first]  # (B, e, N, 1): cs at the row before the block
        left = self.C[..., first:last] * torch.exp(rows - split).to(work)  # (B, e, N, Q)
        right = torch.exp(split - cs[..., :first]).to(work) * self.weighted_B[..., :first]  # (B, e, N, first)
        past = torch.einsum("bhnq,bhns->bhqs", left, right)
        return torch.cat([past, block], dim=-1)


def _channel_chunk(batch: int, channels: int, rows: int, length: int, state: int) -> int:
    """Channels per chunk so that a block of ``rows`` query rows stays near :data:`BLOCK_ELEMENTS` values."""
    per_channel = batch * max(rows * length, state * rows * rows, state * length)
    return max(1, min(channels, BLOCK_ELEMENTS // max(per_channel, 1)))


def hidden_attention(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, delta_bias: Tensor | None = None,
    delta_softplus: bool = False, channel_mean: bool = False, block: int = 128,
) -> Tensor:
    """The hidden attention matrix of a selective scan, in the conventions of :func:`vimtune.ops.selective_scan`.

    ``einsum("bets,bes->bet", alpha, u)`` equals ``selective_scan(u, delta, A, B, C, delta_bias=...,
    delta_softplus=...)`` (D and z left out).

    Args:
        u: (B, E, T) scan input (its shape and dtype only; alpha does not depend on it).
        delta: (B, E, T) raw step sizes. A: (E, N), negative. B, C: (B, N, T).
        delta_bias: (E,) or None. delta_softplus: apply softplus (threshold 20) to ``delta + delta_bias``.
        channel_mean: return the mean over the E channels, (B, T, T), built chunk by chunk (for long sequences:
            T = 6085 takes one (B, T, T) float32 map plus bounded blocks).
        block: query rows per block.

    Returns:
        alpha (B, E, T, T), or (B, T, T) with ``channel_mean``, in ``promote(u.dtype, float32)``; zero above
        the diagonal.
    """
    _check(u, delta, A, B, C)
    work = torch.promote_types(u.dtype, torch.float32)
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    batch, channels, length = u.shape
    shape = (batch, length, length) if channel_mean else (batch, channels, length, length)
    out = torch.zeros(shape, dtype=work, device=u.device)
    chunk = _channel_chunk(batch, channels, block, length, A.shape[-1])
    for lo in range(0, channels, chunk):
        hi = min(lo + chunk, channels)
        terms = _ScanTerms(delta[:, lo:hi], A[lo:hi], B, C, work)
        for first in range(0, length, block):
            last = min(first + block, length)
            rows = terms.rows(first, last)  # (B, e, Q, last)
            if channel_mean:
                out[:, first:last, :last] += rows.sum(dim=1) / channels
            else:
                out[:, lo:hi, first:last, :last] = rows
    return out


def hidden_attention_row(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, row: int, delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Row ``row`` of :func:`hidden_attention`, what token ``row`` reads from every token: (B, E, T).

    Costs O(E N T) (no T x T matrix), e.g. the cls token's row of a long sequence.
    """
    _check(u, delta, A, B, C)
    length = u.shape[-1]
    if not 0 <= row < length:
        raise ValueError(f"hidden_attention_row: row {row} is outside the sequence of {length} tokens")
    work = torch.promote_types(u.dtype, torch.float32)
    terms = _ScanTerms(prepare_delta(delta, delta_bias, delta_softplus), A, B, C, work)
    out = u.new_zeros(u.shape, dtype=work)
    out[..., :row + 1] = terms.rows(row, row + 1)[:, :, 0]
    return out
