"""Time-major CPU path of the bidirectional Mamba mixer: fused C++ conv + SiLU and selective scan.

The kernels, ``csrc/mixer_cpu.cpp``, work on time-major (B, T, E) tensors whose last dimension has
unit stride, so ``x`` and ``z`` are read as column slices of ``in_proj``'s (B, T, 2E) output and
``B``, ``C`` as column slices of ``x_proj``'s (B, T, R + 2N) output, and both directions run in
original time order: no flips, transposes or copies. They are built like
:mod:`vimtune.ops.scan_cpu`, by :func:`vimtune.ops._build.load_cpu_extension` (``-march=native``,
cached in torch's extensions directory); when the build fails, :func:`mixer_kernels_available` warns
once and returns False and the mixer keeps its layout-generic path.

For backward the mixer's scan (:func:`selective_scan_recompute_tm`) keeps neither its input ``u`` nor
``delta``: it recomputes ``u`` from the conv input and ``delta`` from the low-rank ``dt``. The backward
kernels leave out what a frozen backbone does not need: ``dA`` when ``A`` needs no gradient, the conv's
weight and bias gradients when neither needs one.

float32 and float64 inputs are computed in their own precision (sums over batch, time or channels
in float64); other floating dtypes are computed in float32 and the results cast back. bfloat16
activations (as under CPU autocast) are read and written by the kernels in bfloat16, with float32
parameters: no float32 copies of them are made (but of the scan's B and C, (B, T, N), N / E of the
activations' size), and the results are bit for bit those of the float32 kernels on the same values, cast
to bfloat16.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vimtune.ops._build import load_cpu_extension
from vimtune.ops.cpu_linear import linear

if TYPE_CHECKING:
    from vimtune.models.mamba import BiMambaMixer

_SOURCE = Path(__file__).parent / "csrc" / "mixer_cpu.cpp"


@functools.cache
def _ops() -> object | None:
    """Build (or load from the cache) the extension; its ``torch.ops`` namespace, or None on failure."""
    return load_cpu_extension(
        "vimtune_mixer_cpu",
        _SOURCE,
        what="C++ CPU mixer kernels",
        fallback="the mixer uses its generic path.",
    )


def mixer_kernels_available() -> bool:
    """True when the C++ mixer kernels are built and loaded (builds them on the first call; never raises)."""
    return _ops() is not None


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _storage_dtype(activations: tuple[Tensor, ...], work: torch.dtype) -> torch.dtype:
    """The dtype the kernels read and write the activations in: bfloat16 when all of them are bfloat16
    and the compute dtype is float32, else the compute dtype."""
    if work == torch.float32 and all(t.dtype == torch.bfloat16 for t in activations):
        return torch.bfloat16
    return work


def _lanes(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` with unit stride over its last dimension (a view when it already is one)."""
    t = t.detach().to(dtype)
    return t if t.stride(-1) == 1 else t.contiguous()


def _meta(*inputs: Tensor) -> tuple[tuple[torch.dtype, torch.Size], ...]:
    """(dtype, shape) of each input, to cast the gradients back."""
    return tuple((t.dtype, t.shape) for t in inputs)


def _cast_back(
    grads: tuple[Tensor | None, ...], meta: tuple[tuple[torch.dtype, torch.Size], ...]
) -> tuple[Tensor | None, ...]:
    """Each gradient in its input's dtype and shape (None, for one not computed, stays None).

    A gradient already in its input's dtype and shape is returned as the very tensor, not a view of it:
    autograd adds a second gradient of the same input (e.g. dL/du from ``x_proj`` beside the scan's) in
    place only into a tensor that nothing else shares, and a view shares its base's storage, which cost a
    fresh (B, T, E) sum per direction and layer of a training step.
    """
    cast = []
    for g, (dtype, shape) in zip(grads, meta, strict=True):
        g = None if g is None else g.to(dtype)
        cast.append(g if g is None or g.shape == shape else g.view(shape))
    return tuple(cast)


def _conv_work(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The conv kernel's inputs: x in its storage dtype, weight and bias in the compute dtype (views when
    they already fit)."""
    work = _compute_dtype(x, weight, bias)
    return _lanes(x, _storage_dtype((x,), work)), _lanes(weight, work), _lanes(bias, work)


_SCAN_ACTIVATION = (True, True, False, True, True, False, True, False)  # u, delta, A, B, C, D, z, delta_bias


def _scan_work(*inputs: Tensor) -> tuple[Tensor, ...]:
    """The scan kernel's inputs (u, delta, A, B, C, D, z, delta_bias), unit stride last: the activations
    (u, delta, B, C, z) in their storage dtype, the parameters (A, D, delta_bias) in the compute dtype."""
    work = _compute_dtype(*inputs)
    store = _storage_dtype(tuple(t for t, act in zip(inputs, _SCAN_ACTIVATION, strict=True) if act), work)
    return tuple(_lanes(t, store if act else work) for t, act in zip(inputs, _SCAN_ACTIVATION, strict=True))


def _chunk_states(
    ctx: torch.autograd.function.FunctionCtx, grad_enabled: bool, work_inputs: tuple[Tensor, ...]
) -> Tensor | None:
    """A buffer for the states the scan forward keeps for its backward, (B, E / 16, chunks, N, 16) in the
    compute dtype, when a gradient will be needed (``grad_enabled``: grad mode where the autograd function
    was applied, which its forward does not see) and the sequence has more than one backward chunk (the
    backward then reads them instead of running the recurrence again to find them); else None."""
    if not (grad_enabled and any(ctx.needs_input_grad)):
        return None
    u, A = work_inputs[0], work_inputs[2]
    shape = _ops().chunk_states_shape(u.shape[0], u.shape[1], u.shape[2], A.shape[1])
    return A.new_empty(shape) if shape[2] > 1 else None


def _scan_grads(
    work_inputs: tuple[Tensor, ...], flags: tuple[bool, bool], dout: Tensor,
    meta: tuple[tuple[torch.dtype, torch.Size], ...], need_A: bool, dz_out: tuple[Tensor, bool] | tuple[()] = (),
    chunk_states: Tensor | None = None, out_scale: float = 1.0,
) -> tuple[Tensor | None, ...]:
    """The scan kernel's backward: gradients of (u, delta, A, B, C, D, z, delta_bias) in that order, each in
    its input's dtype and shape (``meta``). ``flags`` = (delta_softplus, reverse); dout (B, T, E). Without
    ``need_A`` (a frozen A) the kernel skips dA and its slot is None. With ``dz_out`` (an
    :func:`_kernel_half`) dz is written there and its slot is None. ``chunk_states``: what the forward kept
    (:func:`_chunk_states`), or None. ``out_scale``: the forward's (the kernel scales dout by it as it reads it)."""
    du, ddelta, dz, dA, dB, dC, dD, dbias = _ops().scan_bwd(
        *work_inputs, *flags, _lanes(dout, work_inputs[0].dtype), need_A, *dz_out, chunk_states=chunk_states,
        out_scale=out_scale,
    )
    return _cast_back((du, ddelta, dA if need_A else None, dB, dC, dD, None if dz_out else dz, dbias), meta)


class _InProjGrad:
    """The gradient of ``in_proj``'s (B, T, 2E) output, written in place by the mixer's backward kernels.

    Left to autograd, each direction's conv backward returns its own dL/dx and each scan backward its
    own dL/dz, which autograd adds up per half and then concatenates: two (B, T, E) additions and a
    (B, T, 2E) copy per mixer and training step. Instead the first kernel to reach a half writes it and
    the second adds to it (as a torch addition of the two rounded gradients would: the same bits), and
    :class:`_SplitXZ`'s backward passes the buffer on. Halves: 0 = x (the convs' input), 1 = z.
    """

    def __init__(self, xz: Tensor, width: int) -> None:
        self.shape, self.dtype, self.width = xz.shape, xz.dtype, width
        self.buffer: Tensor | None = None
        self.written = [False, False]

    def half(self, index: int) -> tuple[Tensor, bool]:
        """Half ``index`` (B, T, E) of the buffer (allocated on first use) and whether it already holds a
        gradient to add to."""
        if self.buffer is None:
            self.buffer = torch.empty(self.shape, dtype=self.dtype)
        accumulate, self.written[index] = self.written[index], True
        return self.buffer[..., index * self.width : (index + 1) * self.width], accumulate

    def add(self, index: int, grad: Tensor) -> None:
        """Adds a gradient (B, T, E) computed outside the kernels to half ``index``."""
        view, accumulate = self.half(index)
        view.add_(grad) if accumulate else view.copy_(grad)

    def take(self) -> Tensor:
        """The (B, T, 2E) gradient, halves nobody wrote zero; resets this object for another backward pass."""
        for index in (0, 1):
            if not self.written[index]:
                self.half(index)[0].zero_()
        grad, self.buffer, self.written = self.buffer, None, [False, False]
        return grad


def _kernel_half(into: _InProjGrad | None, index: int, kernel_dtype: torch.dtype) -> tuple[Tensor, bool] | tuple[()]:
    """The output arguments (half ``index``, accumulate) for a backward kernel to write its gradient into
    ``into``; none (the kernel returns the gradient) without ``into`` or when the kernel computes in
    another dtype than the buffer's."""
    return into.half(index) if into is not None and into.dtype == kernel_dtype else ()


def _routed(into: _InProjGrad | None, index: int, grad: Tensor | None) -> Tensor | None:
    """The gradient a backward returns for x (``index`` 0) or z (1): ``grad`` without ``into``; else None, after
    adding ``grad`` (one the kernel returned instead of writing it) to half ``index``."""
    if into is None:
        return grad
    if grad is not None:
        into.add(index, grad)
    return None


class _SplitXZ(torch.autograd.Function):
    """``in_proj``'s output (B, T, 2E) -> its column slices x, z (B, T, E), whose gradients the mixer's
    kernels write into an :class:`_InProjGrad` (any other gradient reaching x or z is added to it)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, xz: Tensor, grad: _InProjGrad) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        ctx.grad = grad
        return tuple(xz.split(grad.width, dim=-1))

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dx: Tensor | None, dz: Tensor | None) -> tuple[Tensor, None]:
        for index, other in enumerate((dx, dz)):
            if other is not None:
                ctx.grad.add(index, other)
        return ctx.grad.take(), None


def _conv_forward(x: Tensor, work: tuple[Tensor, Tensor, Tensor], reverse: bool) -> Tensor:
    """The conv kernel on ``work`` (:func:`_conv_work` of x, weight, bias): u (B, T, E) in the dtype of x."""
    return _ops().conv_fwd(*work, reverse).to(x.dtype)


class _ConvSiLU(torch.autograd.Function):
    """Autograd wrapper of the conv kernel; the backward recomputes the pre-activations from ``x``. Given an
    :class:`_InProjGrad`, dL/dx goes into its x half instead of being returned."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor, reverse: bool,
        into: _InProjGrad | None = None,
    ) -> Tensor:
        work = _conv_work(x, weight, bias)
        ctx.save_for_backward(*work)
        ctx.meta = _meta(x, weight, bias)
        ctx.reverse, ctx.into = reverse, into
        return _conv_forward(x, work, reverse)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dout: Tensor) -> tuple[Tensor | None, ...]:
        x_w, weight_w, bias_w = ctx.saved_tensors
        param_grads = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]  # skipped for a frozen conv
        dx_out = _kernel_half(ctx.into, 0, x_w.dtype)
        dx, dweight, dbias = _ops().conv_bwd(x_w, weight_w, bias_w, ctx.reverse, _lanes(dout, x_w.dtype), param_grads,
                                             *dx_out)
        if not param_grads:
            dweight = dbias = None  # empty tensors from the kernel
        dx, dweight, dbias = _cast_back((None if dx_out else dx, dweight, dbias), ctx.meta)
        return _routed(ctx.into, 0, dx), dweight, dbias, None, None


def causal_conv1d_silu(x: Tensor, weight: Tensor, bias: Tensor, reverse: bool = False) -> Tensor:
    """``silu`` of a depthwise causal convolution along time, in time-major layout.

    Forward direction: ``u[t] = silu(bias + sum_k weight[:, k] * x[t - K + 1 + k])`` (zero before
    t = 0), i.e. ``silu(conv1d(x^T, padding=K - 1)[..., :T])^T``. ``reverse=True`` gives the same
    convolution run on the time-flipped sequence, expressed in original time order:
    ``u[t] = silu(bias + sum_k weight[:, k] * x[t + K - 1 - k])`` (zero from t = T on).

    Args:
        x: (B, T, E), any strides over B and T (unit stride over E avoids a copy).
        weight: (E, 1, K) or (E, K) depthwise kernel (``nn.Conv1d(E, E, K, groups=E).weight``).
        bias: (E,).
        reverse: run the convolution backwards in time.

    Returns:
        u (B, T, E), contiguous, in the dtype of ``x``.
    """
    return _ConvSiLU.apply(x, weight, bias, reverse, None)


class _SelectiveScanTM(torch.autograd.Function):
    """Autograd wrapper of the time-major scan; the backward recomputes the states."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
        D: Tensor, z: Tensor, delta_bias: Tensor, delta_softplus: bool, reverse: bool, grad_enabled: bool,
    ) -> Tensor:
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        work_inputs = _scan_work(*inputs)
        chunk_states = _chunk_states(ctx, grad_enabled, work_inputs)
        out = _ops().scan_fwd(*work_inputs, delta_softplus, reverse, chunk_states=chunk_states)
        ctx.save_for_backward(*work_inputs, chunk_states)  # after the forward has filled chunk_states
        ctx.meta = _meta(*inputs)
        ctx.flags = (delta_softplus, reverse)
        return out.to(u.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dout: Tensor) -> tuple[Tensor | None, ...]:
        *work_inputs, chunk_states = ctx.saved_tensors
        grads = _scan_grads(tuple(work_inputs), ctx.flags, dout, ctx.meta, ctx.needs_input_grad[2],
                            chunk_states=chunk_states)
        return (*grads, None, None, None)


def selective_scan_tm(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor, delta_bias: Tensor,
    delta_softplus: bool = True, reverse: bool = False,
) -> Tensor:
    """Selective scan in time-major layout; the meaning of :func:`~vimtune.ops.selective_scan` on transposes.

    ``delta <- softplus(delta + delta_bias)``; ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``;
    ``y_t = C_t . h_t + D u_t``; ``out_t = y_t * silu(z_t)``. ``reverse=True`` runs the recurrence
    from t = T - 1 down to 0 (equal to flipping every time axis, scanning, and flipping back).

    Args:
        u, delta, z: (B, T, E). A: (E, N). B, C: (B, T, N). D, delta_bias: (E,). Activations may
            have any strides over B and T (unit stride over the last dimension avoids a copy).
        delta_softplus: apply softplus (threshold 20) to ``delta + delta_bias``.
        reverse: scan backwards in time.

    Returns:
        out (B, T, E), contiguous, in the dtype of ``u``.
    """
    return _SelectiveScanTM.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse,
                                  torch.is_grad_enabled())


class _SelectiveScanRecomputeTM(torch.autograd.Function):
    """The time-major scan with ``delta = dt @ dt_weight^T`` formed inside it; saves neither u nor delta.

    The backward recomputes ``delta`` from the low-rank ``dt`` and ``u`` from the conv input with the
    conv forward kernel (bit-identical to the forward's ``u``), so the (B, T, E) tensors kept for it
    are only the conv input ``x`` and ``z``: column slices of ``in_proj``'s output, which the conv
    keeps alive anyway; past 256 steps it also keeps the states before the backward's chunks,
    (B, E, chunks, N). Given an :class:`_InProjGrad`, dL/dz goes into its z half instead of being returned.
    The output is multiplied by ``out_scale`` (a power of two) inside the kernels, forward and backward.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(
        ctx: torch.autograd.function.FunctionCtx, u: Tensor, dt: Tensor, dt_weight: Tensor, A: Tensor, B: Tensor,
        C: Tensor, D: Tensor, z: Tensor, delta_bias: Tensor, conv_x: Tensor, conv_weight: Tensor, conv_bias: Tensor,
        delta_softplus: bool, reverse: bool, into: _InProjGrad | None, grad_enabled: bool, out_scale: float,
    ) -> Tensor:
        delta = linear(dt, dt_weight)  # (B, T, E), freed on return
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        work_inputs = _scan_work(*inputs)
        chunk_states = _chunk_states(ctx, grad_enabled, work_inputs)
        out = _ops().scan_fwd(*work_inputs, delta_softplus, reverse, chunk_states=chunk_states, out_scale=out_scale)
        # after the forward has filled chunk_states
        ctx.save_for_backward(dt, dt_weight, A, B, C, D, z, delta_bias, conv_x, conv_weight, conv_bias, chunk_states)
        ctx.meta = _meta(*inputs)
        ctx.flags, ctx.into, ctx.out_scale = (delta_softplus, reverse), into, out_scale
        return out.to(u.dtype)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")  # under the forward's autocast state: delta recomputed alike
    def backward(ctx: torch.autograd.function.FunctionCtx, dout: Tensor) -> tuple[Tensor | None, ...]:
        dt, dt_weight, A, B, C, D, z, delta_bias, conv_x, conv_weight, conv_bias, chunk_states = ctx.saved_tensors
        u_dtype, reverse = ctx.meta[0][0], ctx.flags[1]
        u = _ops().conv_fwd(*_conv_work(conv_x, conv_weight, conv_bias), reverse).to(u_dtype)  # as in forward
        work_inputs = _scan_work(u, linear(dt, dt_weight), A, B, C, D, z, delta_bias)
        del u
        du, ddelta, dA, dB, dC, dD, dz, dbias = _scan_grads(work_inputs, ctx.flags, dout, ctx.meta,
                                                            ctx.needs_input_grad[3],
                                                            _kernel_half(ctx.into, 1, work_inputs[6].dtype),
                                                            chunk_states, ctx.out_scale)
        del work_inputs
        dz = _routed(ctx.into, 1, dz)
        # The gradients autograd gives ``linear(dt, dt_weight)`` (with (B, T) folded into rows).
        ddelta_rows, dt_rows = ddelta.flatten(0, -2), dt.flatten(0, -2)
        d_dt = linear(ddelta_rows, dt_weight.t()).view(dt.shape) if ctx.needs_input_grad[1] else None
        d_weight = ddelta_rows.t() @ dt_rows if ctx.needs_input_grad[2] else None
        return du, d_dt, d_weight, dA, dB, dC, dD, dz, dbias, None, None, None, None, None, None, None, None


def selective_scan_recompute_tm(
    u: Tensor, dt: Tensor, dt_weight: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
    delta_bias: Tensor, conv_x: Tensor, conv_weight: Tensor, conv_bias: Tensor,
    delta_softplus: bool = True, reverse: bool = False,
) -> Tensor:
    """:func:`selective_scan_tm` with ``delta = dt @ dt_weight^T``, keeping neither ``u`` nor ``delta`` for backward.

    ``u`` must be ``causal_conv1d_silu(conv_x, conv_weight, conv_bias, reverse)``: the backward
    recomputes it from those (and ``delta`` from ``dt``, ``dt_weight``) instead of saving two (B, T, E)
    tensors. Gradients flow to ``u`` (and from there through the conv to ``conv_x``, ``conv_weight``,
    ``conv_bias``), ``dt``, ``dt_weight`` and the other scan inputs; none go directly to ``conv_x``,
    ``conv_weight`` or ``conv_bias``.

    Args:
        u, z: (B, T, E). dt: (B, T, R), e.g. a column slice of ``x_proj``'s output (kept, not copied).
            dt_weight: (E, R), ``dt_proj.weight`` (a parametrized weight gets its gradient through
            autograd). A: (E, N). B, C: (B, T, N). D, delta_bias: (E,). conv_x: (B, T, E), the conv
            input (e.g. a column slice of ``in_proj``'s output). conv_weight: (E, 1, K) or (E, K).
            conv_bias: (E,). Activations may have any strides over B and T (unit stride over the
            last dimension avoids a copy).
        delta_softplus: apply softplus (threshold 20) to ``delta + delta_bias``.
        reverse: direction of both the conv that made ``u`` and the scan.

    Returns:
        out (B, T, E), contiguous, in the dtype of ``u``.
    """
    return _SelectiveScanRecomputeTM.apply(
        u, dt, dt_weight, A, B, C, D, z, delta_bias, conv_x, conv_weight, conv_bias, delta_softplus, reverse, None,
        torch.is_grad_enabled(), 1.0,
    )


_HALF = 0.5
"""The scan kernels' ``out_scale`` in the mixer: the 1/2 of the directions' mean ``(y_fwd + y_bwd) / 2``, taken
as ``y_fwd / 2 + y_bwd / 2`` inside the kernels (the same bits: halving is exact, but where it makes a
subnormal), so that neither the forward nor the backward spends a pass over (B, T, E) values on it."""


def _direction_tm(
    mixer: BiMambaMixer, x: Tensor, z: Tensor, reverse: bool, conv: torch.nn.Conv1d, x_proj: torch.nn.Module,
    dt_proj: torch.nn.Linear, A_log: Tensor, D: Tensor, into: _InProjGrad | None,
) -> Tensor:
    """One direction of the mixer. x, z: (B, T, E) -> y / 2 (B, T, E), in original time order (the half of the
    directions' mean, taken inside the scan kernels); with ``into``, the gradients of x and z go there."""
    u = _ConvSiLU.apply(x, conv.weight, conv.bias, reverse, into)
    dt, Bm, Cm = x_proj(u).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)  # column slices
    A = -torch.exp(A_log.to(_compute_dtype(x, A_log)))
    # delta = dt @ dt_proj.weight^T is formed inside the scan (its bias is added by the kernel); u and
    # delta are recomputed in the backward rather than kept.
    return _SelectiveScanRecomputeTM.apply(
        u, dt, dt_proj.weight, A, Bm, Cm, D, z, dt_proj.bias, x, conv.weight, conv.bias, True, reverse, into,
        torch.is_grad_enabled(), _HALF,
    )


def _direction_in_pieces(
    mixer: BiMambaMixer, x: Tensor, z: Tensor, reverse: bool, conv: torch.nn.Conv1d, x_proj: torch.nn.Module,
    dt_proj: torch.nn.Linear, A_log: Tensor, D: Tensor, y: Tensor, piece: int,
) -> None:
    """One direction of the mixer without autograd, ``piece`` time steps at a time (in scan order), the scan
    state carried from piece to piece; the output (halved, as in :func:`_direction_tm`) is written into ``y``
    (forward direction) or added to it (reverse). x, z, y: (B, T, E). Every step computes what
    :func:`_direction_tm` computes."""
    length, halo = x.shape[1], conv.weight.shape[-1] - 1
    A = -torch.exp(A_log.to(_compute_dtype(x, A_log)))
    state = torch.zeros(x.shape[0], *A.shape, dtype=A.dtype, device=x.device)  # (B, E, N)
    starts = range(0, length, piece)
    for lo in reversed(starts) if reverse else starts:
        hi = min(lo + piece, length)
        # the conv reads K - 1 steps before the piece (forward direction) or after it (reverse)
        first, last = (lo, min(hi + halo, length)) if reverse else (max(lo - halo, 0), hi)
        window = x[:, first:last]  # no autograd here: the kernel without the autograd wrapper's cost per call
        u = _conv_forward(window, _conv_work(window, conv.weight, conv.bias), reverse)[:, lo - first : hi - first]
        dt, Bm, Cm = x_proj(u).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
        work = _scan_work(u, linear(dt, dt_proj.weight), A, Bm, Cm, D, z[:, lo:hi], dt_proj.bias)
        if work[0].dtype == y.dtype:  # the kernel writes (forward direction) or adds (reverse) into y itself
            _ops().scan_fwd(*work, True, reverse, state, None, y[:, lo:hi], reverse, _HALF)
        else:
            out = _ops().scan_fwd(*work, True, reverse, state, out_scale=_HALF).to(y.dtype)
            if reverse:
                y[:, lo:hi].add_(out)
            else:
                y[:, lo:hi].copy_(out)


INFERENCE_PIECE = 512
"""Time steps per piece of the mixer's inference path, used when no gradient is recorded and the
sequence is longer: the conv output, ``delta`` and the scan output then exist one piece at a time.
Smaller pieces use less memory and more calls; set it above any sequence length to turn the pieces off."""


def bimamba_forward_tm(mixer: BiMambaMixer, hidden: Tensor, piece: int | None = None) -> Tensor:
    """:meth:`BiMambaMixer.forward` computed in time-major layout with the C++ kernels.

    Without autograd (``torch.no_grad`` / ``torch.inference_mode``) and with more than ``piece`` tokens,
    each direction runs ``piece`` time steps at a time (:func:`_direction_in_pieces`), so that of the
    (B, T, E) intermediates only ``in_proj``'s output and the summed scan outputs are ever whole.

    Args:
        mixer: the mixer whose modules and parameters are used (``in_proj``, ``x_proj``, ``x_proj_b``
            and ``out_proj`` are called as modules, so wrapped ones such as LoRA's work).
        hidden: (B, T, D).
        piece: time steps per piece of the inference path (default: :data:`INFERENCE_PIECE`, read at the call).

    Returns:
        (B, T, D).
    """
    piece = INFERENCE_PIECE if piece is None else piece
    xz = mixer.in_proj(hidden)  # (B, T, 2E)
    into = _InProjGrad(xz, mixer.d_inner) if xz.requires_grad else None
    x, z = _SplitXZ.apply(xz, into) if into is not None else xz.split(mixer.d_inner, dim=-1)  # column slices
    if not torch.is_grad_enabled() and x.shape[1] > piece:
        y = torch.empty_like(z, memory_format=torch.contiguous_format)
        _direction_in_pieces(mixer, x, z, False, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D,
                             y, piece)
        _direction_in_pieces(mixer, x, z, True, mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log,
                             mixer.D_b, y, piece)
        return mixer.out_proj(y)
    y = _direction_tm(mixer, x, z, False, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D, into)
    y_bwd = _direction_tm(mixer, x, z, True, mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log,
                          mixer.D_b, into)
    return mixer.out_proj(y.add_(y_bwd))  # in place on the fresh scan output: y_fwd / 2 + y_bwd / 2
