"""Where one step's time goes: ``torch.profiler`` self times of its operators, in four groups.

``matmul`` (torch's matrix products, oneDNN's inner product and the patch-embedding convolution),
``kernels`` (vimtune's own C++ scan and conv kernels: operators of its ``vimtune_scan_cpu`` and
``vimtune_mixer_cpu`` libraries), ``attention`` (torch's fused scaled-dot-product attention) and ``other``
(everything else: elementwise ops, norms (vimtune's C++ RMSNorm too, as a DeiT's layer norm is here), SVP's
prompt update (its C++ kernel too), copies, the optimizer, autograd's own work). Self time is the time an
operator's calling thread spends in it, so the groups add up to about the step's wall time at any thread
count. Used by
:mod:`vimtune.bench.measure` (spec key ``breakdown``) for ``vimtune bench step --breakdown``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

GROUPS = ("matmul", "kernels", "attention", "other")
MATMUL_OPS = frozenset({
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mv", "aten::addmv", "aten::dot",
    "aten::mkldnn_convolution", "aten::convolution_backward",
    "mkldnn::_linear_pointwise",  # oneDNN's inner product (vimtune.ops.cpu_linear)
})
KERNEL_LIBRARIES = ("vimtune_scan_cpu::", "vimtune_mixer_cpu::")  # the scan and conv kernels' operators


def group_of(op_name: str) -> str:
    """The group (one of :data:`GROUPS`) of a profiler event named ``op_name``, e.g. ``aten::mm`` -> matmul,
    ``vimtune_mixer_cpu::scan_bwd`` -> kernels, ``aten::_scaled_dot_product_flash_attention_for_cpu`` ->
    attention."""
    if op_name in MATMUL_OPS:
        return "matmul"
    if op_name.startswith(KERNEL_LIBRARIES):
        return "kernels"
    if "scaled_dot_product" in op_name:
        return "attention"
    return "other"


def _profiled(step: Callable[[], None]) -> dict[str, Any]:
    """One profiled run of ``step``: its seconds per group, ``total`` and ``kernel_ops``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    seconds = dict.fromkeys(GROUPS, 0.0)
    kernel_ops: dict[str, float] = {}
    for event in prof.key_averages():
        group, spent = group_of(event.key), event.self_cpu_time_total / 1e6
        seconds[group] += spent
        if group == "kernels":
            kernel_ops[event.key] = spent
    return seconds | {"total": sum(seconds.values()), "kernel_ops": kernel_ops}


def profile_breakdown(step: Callable[[], None], runs: int = 2) -> dict[str, Any]:
    """Run ``step`` ``runs`` times under ``torch.profiler`` (CPU activity) and return, of the run with the least
    profiled time, the seconds of self time per group of :data:`GROUPS`, ``total`` (their sum) and
    ``kernel_ops`` (seconds per vimtune operator, e.g. ``vimtune_mixer_cpu::scan_bwd``)."""
    return min((_profiled(step) for _ in range(runs)), key=lambda split: split["total"])
