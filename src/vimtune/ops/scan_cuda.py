"""Thin wrapper over mamba_ssm's fused CUDA selective scan (used when that package imports).

Not exercised by the test suite (no GPU there); it only forwards arguments, whose meaning is the
same as :func:`vimtune.ops.scan_reference.selective_scan_reference`.
"""

from __future__ import annotations

import importlib.util

from torch import Tensor


def cuda_kernel_available() -> bool:
    """True when ``mamba_ssm`` can be imported (its kernels need a CUDA device at call time)."""
    return importlib.util.find_spec("mamba_ssm") is not None


def selective_scan_cuda(
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
    """Call ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``; shapes as the reference."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(
        u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(),
        D, None if z is None else z.contiguous(), delta_bias, delta_softplus, return_last_state,
    )
