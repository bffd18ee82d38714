"""Triton kernels of the selective scan (Mamba S6), forward and backward, and the functions that launch them.

Meaning as :func:`vimtune.ops.scan_reference.selective_scan_reference`: ``delta <- softplus(delta + bias)``,
``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, ``y_t = C_t . h_t + D u_t``, ``out_t = y_t * silu(z_t)``,
with ``reverse`` running t from L - 1 down to 0. The decay differs per channel and state, so the scan is a
per-channel recurrence; it is split into chunks of ``chunk`` steps so that time is parallel too:

1. ``summary`` (one program per batch row, channel block and chunk): the chunk's state run from zero, and
   the sum of its step sizes (the chunk's decay is ``exp(A * sum)``, a product of factors <= 1).
2. ``carry`` (one program per batch row and channel block): walks the chunks in order and gives the state
   entering each one (the checkpoints) and the last state.
3. ``forward`` (per chunk again): the outputs, from the chunk's entering state.

The backward runs the same three steps on the adjoint ``dh_t = dy_t C_t + exp(delta_{t+1} A) dh_{t+1}`` (which
needs no state), then one program per chunk recomputes the chunk's states from its checkpoint into a
scratch buffer and walks them backwards, giving every gradient. Sums over channels (dB, dC) are written
per channel block, sums over time (dA, dD, d delta_bias) per chunk, and added up by the caller in PyTorch.

All activations are (B, X, L) tensors with any strides (a time-major (B, L, X) tensor is passed as its
transpose), read in their own dtype and computed in float32 (float64 when an input is float64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from vimtune.ops.triton.layout import block_sizes, compute_dtype, new_activation, strides3
from vimtune.ops.triton.math import device_function, sigmoid, softplus, softplus_grad

DEFAULT_CHUNK = 64


@device_function
def _time(i, length, REVERSE: tl.constexpr):
    """Memory time index of scan step ``i``."""
    return length - 1 - i if REVERSE else i


@device_function
def _step_delta(delta_ptr, off, mask, bias, SOFTPLUS: tl.constexpr, COMPUTE: tl.constexpr):
    """(raw delta + bias, step size) of one time step, (BLOCK_E,) each."""
    x = tl.load(delta_ptr + off, mask=mask, other=0.0).to(COMPUTE) + bias
    return x, softplus(x) if SOFTPLUS else x


@device_function
def _channel_block(A_ptr, D_ptr, bias_ptr, channels, n_state, sA_e, sA_n, HAS_D: tl.constexpr,
                   HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's channel block (program axis 1): channel and state indices e, n; A (BLOCK_E, BLOCK_N) and
    D, bias (BLOCK_E,) (zero where absent or out of range); the masks of valid channels, states and both."""
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    e_ok, n_ok = e < channels, n < n_state
    mask = e_ok[:, None] & n_ok[None, :]
    A = tl.load(A_ptr + e[:, None] * sA_e + n[None, :] * sA_n, mask=mask, other=0.0).to(COMPUTE)
    zero = tl.zeros(e.shape, dtype=COMPUTE)  # tensors either way: a helper returns values of one kind
    D = tl.load(D_ptr + e, mask=e_ok, other=0.0).to(COMPUTE) if HAS_D else zero
    bias = tl.load(bias_ptr + e, mask=e_ok, other=0.0).to(COMPUTE) if HAS_BIAS else zero
    return e, n, A, D, bias, e_ok, n_ok, mask


@triton.jit
def _summary_kernel(
    delta_ptr, p_ptr, z_ptr, q_ptr, A_ptr, bias_ptr, local_ptr, dsum_ptr,
    channels, length, n_state, n_chunks,
    sd_b, sd_e, sd_t, sp_b, sp_e, sp_t, sz_b, sz_e, sz_t, sq_b, sq_n, sq_t, sA_e, sA_n,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
    ADJOINT: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """One chunk's contribution, started from zero. Forward (``ADJOINT`` False): ``x = a x + (delta u) B``
    over the chunk in scan order, p = u, q = B. Adjoint: ``x = a (x + dy C)`` from the chunk's last step to
    its first, p = dout, q = C, ``dy = dout * silu(z)``. Writes x (B, n_chunks, E, N) and the sum of the
    step sizes (B, n_chunks, E)."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(2)
    e, n, A, _, bias, e_ok, n_ok, mask = _channel_block(A_ptr, None, bias_ptr, channels, n_state, sA_e, sA_n,
                                                        False, HAS_BIAS, COMPUTE, BLOCK_E, BLOCK_N)
    x = tl.zeros([BLOCK_E, BLOCK_N], dtype=COMPUTE)
    dsum = tl.zeros([BLOCK_E], dtype=COMPUTE)
    steps = tl.minimum(length - c * CHUNK, CHUNK)
    for j in range(steps):
        i = c * CHUNK + (steps - 1 - j if ADJOINT else j)
        t = _time(i, length, REVERSE)
        _, dl = _step_delta(delta_ptr, b * sd_b + e * sd_e + t * sd_t, e_ok, bias, SOFTPLUS, COMPUTE)
        p = tl.load(p_ptr + b * sp_b + e * sp_e + t * sp_t, mask=e_ok, other=0.0).to(COMPUTE)
        q = tl.load(q_ptr + b * sq_b + n * sq_n + t * sq_t, mask=n_ok, other=0.0).to(COMPUTE)
        a = tl.exp(dl[:, None] * A)
        if ADJOINT:
            if HAS_Z:
                zt = tl.load(z_ptr + b * sz_b + e * sz_e + t * sz_t, mask=e_ok, other=0.0).to(COMPUTE)
                p = p * zt * sigmoid(zt)
            x = a * (x + p[:, None] * q[None, :])
        else:
            x = a * x + (dl * p)[:, None] * q[None, :]
        dsum += dl
    chunk_row = b * n_chunks + c
    tl.store(local_ptr + (chunk_row * channels + e[:, None]) * n_state + n[None, :], x, mask=mask)
    tl.store(dsum_ptr + chunk_row * channels + e, dsum, mask=e_ok)


@triton.jit
def _carry_kernel(
    local_ptr, dsum_ptr, A_ptr, init_ptr, enter_ptr, final_ptr,
    channels, n_state, n_chunks, sA_e, sA_n,
    HAS_INIT: tl.constexpr, BACKWARDS: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Walks the chunks (last to first when ``BACKWARDS``): ``enter[c] = x``, then
    ``x = exp(A * dsum[c]) x + local[c]``. x starts at ``init`` (B, E, N) or zero; ends in ``final``."""
    b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    mask = (e < channels)[:, None] & (n < n_state)[None, :]
    A = tl.load(A_ptr + e[:, None] * sA_e + n[None, :] * sA_n, mask=mask, other=0.0).to(COMPUTE)
    state = e[:, None] * n_state + n[None, :]
    if HAS_INIT:
        x = tl.load(init_ptr + b * channels * n_state + state, mask=mask, other=0.0).to(COMPUTE)
    else:
        x = tl.zeros([BLOCK_E, BLOCK_N], dtype=COMPUTE)
    for k in range(n_chunks):
        c = n_chunks - 1 - k if BACKWARDS else k
        chunk_row = b * n_chunks + c
        tl.store(enter_ptr + chunk_row * channels * n_state + state, x, mask=mask)
        dsum = tl.load(dsum_ptr + chunk_row * channels + e, mask=e < channels, other=0.0)
        local = tl.load(local_ptr + chunk_row * channels * n_state + state, mask=mask, other=0.0)
        x = tl.exp(dsum[:, None] * A) * x + local
    tl.store(final_ptr + b * channels * n_state + state, x, mask=mask)


@triton.jit
def _forward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, enter_ptr, out_ptr,
    channels, length, n_state, n_chunks,
    su_b, su_e, su_t, sd_b, sd_e, sd_t, sz_b, sz_e, sz_t, so_b, so_e, so_t,
    sB_b, sB_n, sB_t, sC_b, sC_n, sC_t, sA_e, sA_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """The outputs of one chunk, from its entering state ``enter`` (B, n_chunks, E, N)."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(2)
    e, n, A, D, bias, e_ok, n_ok, mask = _channel_block(A_ptr, D_ptr, bias_ptr, channels, n_state, sA_e, sA_n,
                                                        HAS_D, HAS_BIAS, COMPUTE, BLOCK_E, BLOCK_N)
    h = tl.load(enter_ptr + ((b * n_chunks + c) * channels + e[:, None]) * n_state + n[None, :], mask=mask,
                other=0.0).to(COMPUTE)
    for j in range(tl.minimum(length - c * CHUNK, CHUNK)):
        t = _time(c * CHUNK + j, length, REVERSE)
        _, dl = _step_delta(delta_ptr, b * sd_b + e * sd_e + t * sd_t, e_ok, bias, SOFTPLUS, COMPUTE)
        u = tl.load(u_ptr + b * su_b + e * su_e + t * su_t, mask=e_ok, other=0.0).to(COMPUTE)
        Bt = tl.load(B_ptr + b * sB_b + n * sB_n + t * sB_t, mask=n_ok, other=0.0).to(COMPUTE)
        Ct = tl.load(C_ptr + b * sC_b + n * sC_n + t * sC_t, mask=n_ok, other=0.0).to(COMPUTE)
        h = tl.exp(dl[:, None] * A) * h + (dl * u)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1) + D * u
        if HAS_Z:
            zt = tl.load(z_ptr + b * sz_b + e * sz_e + t * sz_t, mask=e_ok, other=0.0).to(COMPUTE)
            y = y * zt * sigmoid(zt)
        tl.store(out_ptr + b * so_b + e * so_e + t * so_t, y.to(out_ptr.dtype.element_ty), mask=e_ok)


@triton.jit
def _backward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, enter_ptr, dcarry_ptr, dout_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    channels, length, n_state, n_chunks, n_blocks,
    su_b, su_e, su_t, sd_b, sd_e, sd_t, sz_b, sz_e, sz_t, sg_b, sg_e, sg_t, sdo_b, sdo_e, sdo_t,
    sB_b, sB_n, sB_t, sC_b, sC_n, sC_t, sA_e, sA_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Every gradient of one chunk. Its states are recomputed from ``enter`` into this program's slice of
    ``scratch`` (CHUNK + 1 states of (BLOCK_E, BLOCK_N)), then walked backwards with the adjoint entering from
    the later chunks, ``dcarry`` (B, n_chunks, E, N). du, ddelta, dz share the strides ``sg``; dB, dC are
    written per channel block (B, n_blocks, N, L); dA (B, n_chunks, E, N), dD and dbias (B, n_chunks, E)
    per chunk."""
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    c = tl.program_id(2)
    e, n, A, D, bias, e_ok, n_ok, mask = _channel_block(A_ptr, D_ptr, bias_ptr, channels, n_state, sA_e, sA_n,
                                                        HAS_D, HAS_BIAS, COMPUTE, BLOCK_E, BLOCK_N)
    ei = tl.arange(0, BLOCK_E)
    chunk_row = b * n_chunks + c
    state = (chunk_row * channels + e[:, None]) * n_state + n[None, :]
    program = (b * n_blocks + blk) * tl.num_programs(2) + c
    slot = (program * (CHUNK + 1) * BLOCK_E + ei[:, None]) * BLOCK_N + n[None, :]  # + k * BLOCK_E * BLOCK_N
    h = tl.load(enter_ptr + state, mask=mask, other=0.0).to(COMPUTE)
    tl.store(scratch_ptr + slot, h)
    steps = tl.minimum(length - c * CHUNK, CHUNK)
    for j in range(steps):
        t = _time(c * CHUNK + j, length, REVERSE)
        _, dl = _step_delta(delta_ptr, b * sd_b + e * sd_e + t * sd_t, e_ok, bias, SOFTPLUS, COMPUTE)
        u = tl.load(u_ptr + b * su_b + e * su_e + t * su_t, mask=e_ok, other=0.0).to(COMPUTE)
        Bt = tl.load(B_ptr + b * sB_b + n * sB_n + t * sB_t, mask=n_ok, other=0.0).to(COMPUTE)
        h = tl.exp(dl[:, None] * A) * h + (dl * u)[:, None] * Bt[None, :]
        tl.store(scratch_ptr + slot + (j + 1) * BLOCK_E * BLOCK_N, h)
    tl.debug_barrier()  # the states written above are read below by other threads of the program

    dh_next = tl.load(dcarry_ptr + state, mask=mask, other=0.0).to(COMPUTE)  # exp(delta_{t+1} A) dh_{t+1}
    dA = tl.zeros([BLOCK_E, BLOCK_N], dtype=COMPUTE)
    dD = tl.zeros([BLOCK_E], dtype=COMPUTE)
    dbias = tl.zeros([BLOCK_E], dtype=COMPUTE)
    for jr in range(steps):
        j = steps - 1 - jr
        t = _time(c * CHUNK + j, length, REVERSE)
        x, dl = _step_delta(delta_ptr, b * sd_b + e * sd_e + t * sd_t, e_ok, bias, SOFTPLUS, COMPUTE)
        u = tl.load(u_ptr + b * su_b + e * su_e + t * su_t, mask=e_ok, other=0.0).to(COMPUTE)
        Bt = tl.load(B_ptr + b * sB_b + n * sB_n + t * sB_t, mask=n_ok, other=0.0).to(COMPUTE)
        Ct = tl.load(C_ptr + b * sC_b + n * sC_n + t * sC_t, mask=n_ok, other=0.0).to(COMPUTE)
        dout = tl.load(dout_ptr + b * sdo_b + e * sdo_e + t * sdo_t, mask=e_ok, other=0.0).to(COMPUTE)
        h = tl.load(scratch_ptr + slot + (j + 1) * BLOCK_E * BLOCK_N)
        h_prev = tl.load(scratch_ptr + slot + j * BLOCK_E * BLOCK_N)
        g = b * sg_b + e * sg_e + t * sg_t
        if HAS_Z:
            zt = tl.load(z_ptr + b * sz_b + e * sz_e + t * sz_t, mask=e_ok, other=0.0).to(COMPUTE)
            sz = sigmoid(zt)
            y = tl.sum(h * Ct[None, :], axis=1) + D * u
            tl.store(dz_ptr + g, (dout * y * sz * (1.0 + zt * (1.0 - sz))).to(dz_ptr.dtype.element_ty), mask=e_ok)
            dy = dout * zt * sz
        else:
            dy = dout
        dD += dy * u
        dh = dh_next + dy[:, None] * Ct[None, :]
        a = tl.exp(dl[:, None] * A)
        du = dy * D + dl * tl.sum(dh * Bt[None, :], axis=1)
        dstep = tl.sum(dh * (A * a * h_prev + u[:, None] * Bt[None, :]), axis=1)
        dA += dh * dl[:, None] * a * h_prev
        dh_next = a * dh
        if SOFTPLUS:
            dstep = dstep * softplus_grad(x)
        dbias += dstep
        tl.store(du_ptr + g, du.to(du_ptr.dtype.element_ty), mask=e_ok)
        tl.store(ddelta_ptr + g, dstep.to(ddelta_ptr.dtype.element_ty), mask=e_ok)
        per_block = ((b * n_blocks + blk) * n_state + n) * length + t
        tl.store(dB_ptr + per_block, tl.sum(dh * (dl * u)[:, None], axis=0), mask=n_ok)
        tl.store(dC_ptr + per_block, tl.sum(dy[:, None] * h, axis=0), mask=n_ok)
    tl.store(dA_ptr + state, dA, mask=mask)
    tl.store(dD_ptr + chunk_row * channels + e, dD, mask=e_ok)
    tl.store(dbias_ptr + chunk_row * channels + e, dbias, mask=e_ok)


def _flags(D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool, reverse: bool,
           compute: torch.dtype) -> dict:
    return dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), REVERSE=bool(reverse),
                COMPUTE=tl.float64 if compute == torch.float64 else tl.float32)


def _chunks(length: int, chunk: int | None) -> tuple[int, int]:
    chunk = DEFAULT_CHUNK if chunk is None else chunk
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two >= 1, got {chunk}")
    return chunk, triton.cdiv(length, chunk)


def chunk_states(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, delta_bias: Tensor | None, delta_softplus: bool,
    reverse: bool, chunk: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The state entering every chunk and the last state.

    Args:
        u, delta: (B, E, L). A: (E, N). B: (B, N, L). delta_bias: (E,) or None.
        chunk: steps per chunk (a power of two; default :data:`DEFAULT_CHUNK`).

    Returns:
        enter (B, n_chunks, E, N), last (B, E, N), dsum (B, n_chunks, E): the sums of the step sizes per
        chunk; all in the compute dtype.
    """
    batch, channels, length = u.shape
    n_state = A.shape[1]
    compute = compute_dtype(u, delta, A, B)
    chunk, n_chunks = _chunks(length, chunk)
    block_e, block_n, warps = block_sizes(channels, n_state, u.device)
    local = u.new_empty(batch, n_chunks, channels, n_state, dtype=compute)
    dsum = u.new_empty(batch, n_chunks, channels, dtype=compute)
    flags = _flags(None, None, delta_bias, delta_softplus, reverse, compute)
    grid = (batch, triton.cdiv(channels, block_e), n_chunks)
    _summary_kernel[grid](
        delta, u, u, B, A, delta_bias, local, dsum, channels, length, n_state, n_chunks,
        *strides3(delta), *strides3(u), 0, 0, 0, *strides3(B), *A.stride(),
        HAS_Z=False, HAS_BIAS=flags["HAS_BIAS"], SOFTPLUS=flags["SOFTPLUS"], REVERSE=flags["REVERSE"],
        ADJOINT=False, COMPUTE=flags["COMPUTE"], BLOCK_E=block_e, BLOCK_N=block_n, CHUNK=chunk, num_warps=warps,
    )
    enter, last = torch.empty_like(local), u.new_empty(batch, channels, n_state, dtype=compute)
    _carry_kernel[grid[:2]](
        local, dsum, A, A, enter, last, channels, n_state, n_chunks, *A.stride(),
        HAS_INIT=False, BACKWARDS=False, COMPUTE=flags["COMPUTE"], BLOCK_E=block_e, BLOCK_N=block_n,
        num_warps=warps,
    )
    return enter, last, dsum


def scan_forward(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, reverse: bool, chunk: int | None = None,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Selective-scan forward.

    Args:
        u, delta, z: (B, E, L), any strides. A: (E, N). B, C: (B, N, L). D, delta_bias: (E,) or None.
        reverse: scan from t = L - 1 down to 0. chunk: steps per chunk (power of two).
        out: (B, E, L) tensor to write the output into (any strides), or None for a new one.

    Returns:
        out (B, E, L) in the dtype of ``u`` (time-major memory when ``u`` is) and the last state (B, E, N)
        in the compute dtype.
    """
    batch, channels, length = u.shape
    n_state = A.shape[1]
    enter, last, _ = chunk_states(u, delta, A, B, delta_bias, delta_softplus, reverse, chunk)
    chunk, n_chunks = _chunks(length, chunk)
    block_e, block_n, warps = block_sizes(channels, n_state, u.device)
    out = new_activation(u, u.dtype) if out is None else out
    flags = _flags(D, z, delta_bias, delta_softplus, reverse, enter.dtype)
    _forward_kernel[(batch, triton.cdiv(channels, block_e), n_chunks)](
        u, delta, A, B, C, D, z, delta_bias, enter, out, channels, length, n_state, n_chunks,
        *strides3(u), *strides3(delta), *strides3(z), *strides3(out), *strides3(B), *strides3(C), *A.stride(),
        **flags, BLOCK_E=block_e, BLOCK_N=block_n, CHUNK=chunk, num_warps=warps,
    )
    return out, last


def scan_backward(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, reverse: bool, dout: Tensor, dlast: Tensor | None = None,
    chunk: int | None = None,
) -> tuple[Tensor, ...]:
    """Selective-scan backward. It keeps nothing from the forward: the chunk checkpoints are recomputed
    (one summary pass, as cheap as a third of the forward) and the states inside each chunk from them.

    Args:
        as :func:`scan_forward`; dout: (B, E, L) gradient of out; dlast: (B, E, N) gradient of the last
        state or None.

    Returns:
        du, ddelta, dz (B, E, L) in the dtypes of u, delta, z (dz None without z); dA (E, N), dB, dC
        (B, N, L), dD, d delta_bias (E,) in the compute dtype (dD, d delta_bias summed even when D, delta_bias
        are None).
    """
    batch, channels, length = u.shape
    n_state = A.shape[1]
    enter, _, dsum = chunk_states(u, delta, A, B, delta_bias, delta_softplus, reverse, chunk)
    compute = enter.dtype
    chunk, n_chunks = _chunks(length, chunk)
    block_e, block_n, warps = block_sizes(channels, n_state, u.device)
    n_blocks = triton.cdiv(channels, block_e)
    grid = (batch, n_blocks, n_chunks)
    flags = _flags(D, z, delta_bias, delta_softplus, reverse, compute)
    local = torch.empty_like(enter)
    _summary_kernel[grid](
        delta, dout, z, C, A, delta_bias, local, torch.empty_like(dsum), channels, length, n_state, n_chunks,
        *strides3(delta), *strides3(dout), *strides3(z), *strides3(C), *A.stride(),
        HAS_Z=flags["HAS_Z"], HAS_BIAS=flags["HAS_BIAS"], SOFTPLUS=flags["SOFTPLUS"], REVERSE=flags["REVERSE"],
        ADJOINT=True, COMPUTE=flags["COMPUTE"], BLOCK_E=block_e, BLOCK_N=block_n, CHUNK=chunk, num_warps=warps,
    )
    dcarry = torch.empty_like(enter)
    _carry_kernel[grid[:2]](
        local, dsum, A, dlast, dcarry, torch.empty_like(enter[:, 0]), channels, n_state, n_chunks, *A.stride(),
        HAS_INIT=dlast is not None, BACKWARDS=True, COMPUTE=flags["COMPUTE"], BLOCK_E=block_e, BLOCK_N=block_n,
        num_warps=warps,
    )
    du, ddelta = new_activation(u, u.dtype), new_activation(u, delta.dtype)
    dz = None if z is None else new_activation(u, z.dtype)
    scratch = u.new_empty(batch * n_blocks * n_chunks * (chunk + 1) * block_e * block_n, dtype=compute)
    dA = torch.empty_like(enter)
    dB = u.new_empty(batch, n_blocks, n_state, length, dtype=compute)
    dC = torch.empty_like(dB)
    dD, dbias = torch.empty_like(dsum), torch.empty_like(dsum)
    _backward_kernel[grid](
        u, delta, A, B, C, D, z, delta_bias, enter, dcarry, dout, scratch,
        du, ddelta, dz, dA, dB, dC, dD, dbias, channels, length, n_state, n_chunks, n_blocks,
        *strides3(u), *strides3(delta), *strides3(z), *strides3(du), *strides3(dout), *strides3(B),
        *strides3(C), *A.stride(),
        **flags, BLOCK_E=block_e, BLOCK_N=block_n, CHUNK=chunk, num_warps=warps,
    )
    return du, ddelta, dz, dA.sum((0, 1)), dB.sum(1), dC.sum(1), dD.sum((0, 1)), dbias.sum((0, 1))
