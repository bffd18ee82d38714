"""Element-wise helpers shared by the Triton kernels, written so that no branch overflows."""

from __future__ import annotations

import triton
import triton.language as tl

# as torch's F.softplus(threshold=20): x itself above it (a constexpr: kernels may read only those globals)
SOFTPLUS_THRESHOLD = tl.constexpr(20.0)


@triton.jit
def sigmoid(x):
    """``1 / (1 + exp(-x))`` without overflow for any x."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def softplus(x):
    """``log(1 + exp(x))`` (accurate for small exp(x)), and x above the threshold."""
    e = tl.exp(tl.minimum(x, SOFTPLUS_THRESHOLD))
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.where(x > SOFTPLUS_THRESHOLD, x, log1p)


@triton.jit
def softplus_grad(x):
    """d softplus / dx: ``sigmoid(x)``, and 1 above the threshold."""
    return tl.where(x > SOFTPLUS_THRESHOLD, 1.0, sigmoid(x))
