"""Thin wrapper over mamba_ssm's fused CUDA selective scan (used when that package imports and runs).

Not exercised by the CPU test suite; it only forwards arguments, whose meaning is the same as
:func:`vimtune.ops.scan_reference.selective_scan_reference`. A mamba_ssm that is installed but was
built against another torch or CUDA often imports and then fails at its first call (``undefined symbol``),
so availability is decided by a tiny call on the device, once per device.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.cache
def _runs_on(device: str) -> bool:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        u = torch.ones(1, 2, 3, device=device)
        out = selective_scan_fn(u, u, -torch.ones(2, 4, device=device), torch.ones(1, 4, 3, device=device),
                                torch.ones(1, 4, 3, device=device))
        return bool(torch.isfinite(out).all())
    except Exception:  # not installed, built for another torch/CUDA, no kernel image for this GPU, ...
        return False


def cuda_kernel_available(device: torch.device | str = "cuda") -> bool:
    """True when ``mamba_ssm`` imports and its selective scan runs a tiny problem on the CUDA ``device``."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return _runs_on(str(device))


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
