"""The kernel scripts' inputs: row-repeating views are read correctly by the mixer kernels."""

from __future__ import annotations

import argparse

import pytest
import torch

from vimtune.bench.mixer_calls import STATE, calls, cases, repeat_first_row, scan_inputs
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
