"""Element-wise helpers shared by the Triton kernels, written so that no branch overflows."""

from __future__ import annotations

from collections.abc import Callable

import triton
import triton.language as tl

from vimtune.ops.triton import interpreter_enabled


def device_function(fn: Callable) -> Callable:
    """``triton.jit`` for a helper that kernels call; under the interpreter the plain Python function, which
    the interpreted kernel calls with triton.language already patched (the interpreter re-patches the whole
    language, about a millisecond, at every call of a jit helper, and the kernels call them every step)."""
    return fn if interpreter_enabled() else triton.jit(fn)

# as torch's F.softplus(threshold=20): x itself above it (a constexpr: kernels may read only those globals)
SOFTPLUS_THRESHOLD = tl.constexpr(20.0)


@device_function
def sigmoid(x):
    """``1 / (1 + exp(-x))`` without overflow for any x."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@device_function
def softplus(x):
    """``log(1 + exp(x))`` (accurate for small exp(x)), and x above the threshold."""
    e = tl.exp(tl.minimum(x, SOFTPLUS_THRESHOLD))
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.where(x > SOFTPLUS_THRESHOLD, x, log1p)


@device_function
def softplus_grad(x):
    """d softplus / dx: ``sigmoid(x)``, and 1 above the threshold."""
    return tl.where(x > SOFTPLUS_THRESHOLD, 1.0, sigmoid(x))
