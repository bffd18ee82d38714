"""``scale * silu(h)`` as one autograd Function that keeps only ``h`` and ``scale`` for backward.

The plain expression ``scale * F.silu(h)`` saves ``h`` (for the SiLU) and ``silu(h)`` (for the
product with a trainable ``scale``): two tensors of the size of ``h``. :func:`scaled_silu` saves
``h`` alone and recomputes the sigmoid in backward, so SVP's prompt generators keep half as much
for their activations.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    """The dtype to compute in: float32 for half / bfloat16, else ``dtype`` itself."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


class ScaledSiLU(torch.autograd.Function):
    """``scale * silu(h)`` with ``scale`` (D,) broadcast over the leading dims of ``h`` (..., D).

    Forward saves ``h`` and ``scale`` only. Backward recomputes ``s = sigmoid(h)`` and returns::

        dh     = grad * scale * s * (1 + h * (1 - s))         # silu'(h) = s * (1 + h (1 - s))
        dscale = sum over the leading dims of grad * h * s    # grad * silu(h)

    each only when that input needs a gradient. Half and bfloat16 inputs are computed in float32
    and rounded once at the end. The output has ``torch.result_type(scale, h)``, the dtype of
    ``scale * F.silu(h)``; ``dh`` has ``h``'s dtype and ``dscale`` has ``scale``'s.
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, scale: Tensor) -> Tensor:
        if scale.dim() != 1 or h.dim() < 1 or h.shape[-1] != scale.shape[0]:
            raise ValueError(f"scaled_silu: scale must be (D,) for h (..., D); got h {tuple(h.shape)}, "
                             f"scale {tuple(scale.shape)}")
        out_dtype = torch.result_type(scale, h)
        compute = _opmath(out_dtype)
        hc = h.to(_opmath(h.dtype))
        out = F.silu(hc).to(compute) * scale.to(compute)
        ctx.save_for_backward(h, scale)
        return out.to(out_dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        h, scale = ctx.saved_tensors
        need_h, need_scale = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = grad_scale = None
        if not (need_h or need_scale):
            return None, None
        compute = _opmath(torch.promote_types(torch.result_type(scale, h), grad.dtype))
        hc, gc = h.to(compute), grad.to(compute)
        if need_h:
            # aten's SiLU backward: (grad * scale) * silu'(h), silu'(h) = s (1 + h (1 - s)), one kernel
            grad_h = torch.ops.aten.silu_backward(gc * scale.to(compute), hc).to(h.dtype)
        if need_scale:
            grad_scale = (gc * F.silu(hc)).reshape(-1, h.shape[-1]).sum(0).to(scale.dtype)
        return grad_h, grad_scale


def scaled_silu(h: Tensor, scale: Tensor) -> Tensor:
    """``scale * silu(h)``: h (..., D), scale (D,) -> (..., D), saving only ``h`` and ``scale``.

    See :class:`ScaledSiLU`. Same values as ``scale * torch.nn.functional.silu(h)`` up to rounding.
    """
    return ScaledSiLU.apply(h, scale)
