"""The kernel scripts' inputs and calls: row-repeating views are read correctly by the mixer kernels; the
selective_scan calls run the build they are given."""

from __future__ import annotations

import argparse

import pytest
import torch

from vimtune.bench.mixer_calls import STATE, calls, cases, repeat_first_row, scan_inputs, selective_scan_calls
from vimtune.ops.mixer_cpu import _ops, mixer_kernels_available


def test_cases_parse_shapes_and_dtypes() -> None:
    args = argparse.Namespace(shapes=["2,9,20", "1,5,16"], dtypes=["float32", "bfloat16"])
    got = [(shape, dtype, x["u"].shape, x["u"].dtype, x["B"].shape) for shape, dtype, x in cases(args)]
    assert got == [
        (f"(2, 9, 20, {STATE})", "float32", (2, 9, 20), torch.float32, (2, 9, STATE)),
        (f"(2, 9, 20, {STATE})", "bfloat16", (2, 9, 20), torch.bfloat16, (2, 9, STATE)),
        (f"(1, 5, 16, {STATE})", "float32", (1, 5, 16), torch.float32, (1, 5, STATE)),
        (f"(1, 5, 16, {STATE})", "bfloat16", (1, 5, 16), torch.bfloat16, (1, 5, STATE)),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_read_row_repeating_views_as_their_copies(dtype: torch.dtype) -> None:
    """Stride-0 rows (what ``scripts/scan_in_cache.py`` times) give bit for bit the results of the same values
    stored in full, forward and backward."""
    if not mixer_kernels_available():
        pytest.skip("the C++ mixer kernels could not be built here")
    repeated = repeat_first_row(scan_inputs(3, 11, 40, dtype))
    for name, t in repeated.items():
        if t.dim() == 3:
            assert t.stride(0) == t.stride(1) == 0 and t.stride(2) == 1, name
            assert torch.equal(t, t[:1, :1].expand_as(t)), name
    stored = {name: t.contiguous() for name, t in repeated.items()}
    ops = _ops()
    for mode, run in calls(ops, repeated).items():
        got, want = run(), calls(ops, stored)[mode]()
        for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,),
                        strict=True):
            assert torch.equal(g, w), mode


class _CountingOps:
    """A kernels namespace that passes every call on to ``ops`` and counts the scan and layout calls."""

    def __init__(self, ops: object) -> None:
        self.ops, self.counts = ops, {"fwd": 0, "bwd": 0, "layout": 0}

    def __getattr__(self, name: str) -> object:
        if name not in self.counts:
            return getattr(self.ops, name)

        def counted(*args: object) -> object:
            self.counts[name] += 1
            return getattr(self.ops, name)(*args)

        return counted


def test_selective_scan_calls_run_the_given_build_and_give_the_wrapper_back() -> None:
    """The A/B script's selective_scan calls run the build they are given (forward, then forward + backward),
    give what the wrapper gives on the same (B, E, L) inputs, and leave the wrapper on its own build. Each call
    reads the layout (W, T) from the given build, not from the wrapper's cache, which it leaves empty."""
    from vimtune.ops import scan_cpu

    if not scan_cpu.cpu_kernel_available():
        pytest.skip("the C++ selective scan could not be built here")
    own = scan_cpu._ops
    own_layout = scan_cpu._layout()  # cached from the wrapper's own build
    x = scan_inputs(2, 9, 20, torch.float32)
    counting = _CountingOps(own())
    runs = selective_scan_calls(counting, x)
    assert list(runs) == ["forward", "fwd+bwd"]
    out = runs["forward"]()
    assert counting.counts == {"fwd": 1, "bwd": 0, "layout": 1}
    grads = runs["fwd+bwd"]()
    assert counting.counts == {"fwd": 2, "bwd": 1, "layout": 2}
    assert scan_cpu._ops is own
    assert scan_cpu._layout.cache_info().currsize == 0 and scan_cpu._layout() == own_layout
    cm = {name: x[name].transpose(1, 2).contiguous() for name in ("u", "delta", "z", "B", "C")}
    want = scan_cpu.selective_scan_cpu(cm["u"], cm["delta"], x["A"], cm["B"], cm["C"], x["D"], cm["z"],
                                       x["delta_bias"], True)
    assert torch.equal(out, want)
    assert len(grads) == 8 and all(g.shape == t.shape for g, t in zip(grads, (*cm.values(), x["A"], x["D"],
                                                                              x["delta_bias"]), strict=True))
