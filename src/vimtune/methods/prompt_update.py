"""SVP's prompt update ``h + sum_i scale_i * silu(pre_i)``, one token left as it is, as one autograd Function.

Written with plain ops (``scale * F.silu(pre)`` per path, their sum, ``h + delta``, then
``torch.where`` to put the cls token back) the update of one layer allocates about six tensors of
the size of ``h`` in forward and a dozen in backward. On a CPU each fresh (B, T, D) tensor costs
page faults besides its pass over memory, and at vim_small sizes these elementwise ops took longer
than the generators' matmuls. :func:`prompt_update` writes its result with one copy and one
in-place multiply-add per path, hands the incoming gradient to ``h`` unchanged (``h`` enters with
coefficient 1 everywhere, the kept token included), and saves only the pre-activations and scales.
On CPU, for float32 and bfloat16 activations with float32 scales, forward and backward are each one
pass of a C++ kernel (:mod:`vimtune.ops.prompt_update_cpu`), which reads bfloat16 without float32
copies; a second-order gradient (``create_graph=True``) goes through the torch ops.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vimtune.ops.prompt_update_cpu import prompt_backward, prompt_forward, takes_kernel

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    """The dtype to compute in: float32 for half / bfloat16, else ``dtype`` itself."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _check(h: Tensor, keep_token: int | None, pairs: tuple[Tensor, ...]) -> None:
    if keep_token is not None and h.dim() != 3:
        raise ValueError(f"prompt_update: h must be (B, T, D) when a token is kept, got {tuple(h.shape)}")
    if keep_token is not None and not -h.shape[1] <= keep_token < h.shape[1]:
        raise IndexError(f"prompt_update: keep_token {keep_token} is out of range for {h.shape[1]} tokens")
    for pre, scale in zip(pairs[0::2], pairs[1::2], strict=True):
        if pre.shape != h.shape or scale.shape != (h.shape[-1],):
            raise ValueError(f"prompt_update: every pre-activation must have h's shape {tuple(h.shape)} and every "
                             f"scale ({h.shape[-1]},); got {tuple(pre.shape)} and {tuple(scale.shape)}")


class PromptUpdate(torch.autograd.Function):
    """``out = h + sum_i scale_i * silu(pre_i)``, except ``out[:, keep_token] = h[:, keep_token]``.

    Inputs: h (..., D) ((B, T, D) when ``keep_token`` is given), then pairs ``pre_i`` (same shape
    as h), ``scale_i`` (D,). Backward, with ``m`` = 0 on the kept token and 1 elsewhere::

        dh       = grad
        dpre_i   = m * grad * scale_i * silu'(pre_i)        # silu'(x) = s (1 + x (1 - s)), s = sigmoid(x)
        dscale_i = sum over the leading dims of m * grad * silu(pre_i)

    each only when that input needs it. Half and bfloat16 are computed in float32. The output has
    the dtype of the plain expression (``h`` promoted with every ``scale_i * silu(pre_i)``); each
    gradient has its input's dtype.
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, keep_token: int | None, *pairs: Tensor) -> Tensor:
        _check(h, keep_token, pairs)
        ctx.save_for_backward(*pairs)
        ctx.keep_token, ctx.h_dtype = keep_token, h.dtype
        ctx.kernel = takes_kernel(h, keep_token, pairs[0::2], pairs[1::2])
        if ctx.kernel:  # float32 or bfloat16 on CPU: one pass (vimtune.ops.prompt_update_cpu)
            return prompt_forward(h, keep_token, pairs[0::2], pairs[1::2])
        out_dtype = h.dtype
        for tensor in pairs:
            out_dtype = torch.promote_types(out_dtype, tensor.dtype)
        compute = _opmath(out_dtype)
        out = h.to(compute, memory_format=torch.contiguous_format, copy=True)
        for pre, scale in zip(pairs[0::2], pairs[1::2], strict=True):
            out.addcmul_(F.silu(pre.to(_opmath(pre.dtype))), scale.to(compute))
        if keep_token is not None:
            out[:, keep_token] = h[:, keep_token]
        return out.to(out_dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        pairs, keep = ctx.saved_tensors, ctx.keep_token
        grads: list[Tensor | None] = [grad.to(ctx.h_dtype) if ctx.needs_input_grad[0] else None, None]
        # else torch's ops below, which create_graph can differentiate and compiled autograd can trace
        if ctx.kernel and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            need = ctx.needs_input_grad[2:]
            dpres, dscales = prompt_backward(grad, keep, pairs[0::2], pairs[1::2], any(need[0::2]), any(need[1::2]))
            for i, (dpre, dscale) in enumerate(zip(dpres, dscales, strict=True)):
                grads += [dpre if need[2 * i] else None, dscale if need[2 * i + 1] else None]
            return tuple(grads)
        for i, (pre, scale) in enumerate(zip(pairs[0::2], pairs[1::2], strict=True)):
            need_pre, need_scale = ctx.needs_input_grad[2 + 2 * i], ctx.needs_input_grad[3 + 2 * i]
            compute = _opmath(torch.promote_types(torch.promote_types(pre.dtype, scale.dtype), grad.dtype))
            pre_c, grad_c = pre.to(compute), grad.to(compute)
            grad_pre = grad_scale = None
            if need_pre:
                upstream = grad_c * scale.to(compute)
                if keep is not None:
                    upstream[:, keep] = 0
                grad_pre = torch.ops.aten.silu_backward(upstream, pre_c).to(pre.dtype)
            if need_scale:
                product = F.silu(pre_c)
                if keep is not None:
                    product[:, keep] = 0
                grad_scale = product.mul_(grad_c).reshape(-1, pre.shape[-1]).sum(0).to(scale.dtype)
            grads += [grad_pre, grad_scale]
        return tuple(grads)


def prompt_update(h: Tensor, keep_token: int | None, *pairs: Tensor) -> Tensor:
    """``h + sum_i scale_i * silu(pre_i)`` with token ``keep_token`` of dim 1 left bitwise as in ``h``.

    Args:
        h: (..., D), or (B, T, D) with ``keep_token``.
        keep_token: index along dim 1 of the token to leave unchanged (SVP's cls token), or None.
        pairs: ``pre_1, scale_1, pre_2, scale_2, ...``: pre-activations shaped like ``h``, scales (D,).

    Returns:
        (same shape as h), contiguous. See :class:`PromptUpdate` for dtypes and the backward.
    """
    return PromptUpdate.apply(h, keep_token, *pairs)


def prompt_update_reference(h: Tensor, keep_token: int | None, *pairs: Tensor) -> Tensor:
    """:func:`prompt_update` as plain autograd ops (the tests' reference and the benchmark's baseline).

    ``h + sum_i scale_i * silu(pre_i)``, then ``torch.where`` with a (T, 1) mask puts token
    ``keep_token`` of ``h`` back. Shapes as in :func:`prompt_update`.
    """
    _check(h, keep_token, pairs)
    out = h
    for pre, scale in zip(pairs[0::2], pairs[1::2], strict=True):
        out = out + scale * F.silu(pre)
    if keep_token is None:
        return out
    keep = torch.ones(h.shape[1], 1, dtype=torch.bool, device=h.device)
    keep[keep_token] = False
    return torch.where(keep, out, h)
