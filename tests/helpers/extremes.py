"""Extreme and non-finite gate inputs, and the check that a kernel puts them where torch's ops do."""

from __future__ import annotations

import torch

# Beyond float32's sigmoid range on both sides (where a clamped exp would leave sigmoid at 1e-38 and make
# silu(-3e38) about -3.5 instead of torch's -0), near its edge (-95, -88), and non-finite.
EXTREME_VALUES = (-float("inf"), -3e38, -1e30, -95.0, -88.0, 90.0, float("inf"), float("nan"))


def assert_matches_torch_at_extremes(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    """Same NaN and inf positions, and the finite values close (bfloat16's rounding, 1e-6 absolute)."""
    assert len(got) == len(want)
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(g.isnan(), w.isnan()), f"output {index}: NaN at other positions"
        assert torch.equal(g.isinf(), w.isinf()), f"output {index}: inf at other positions"
        finite = w.isfinite()
        torch.testing.assert_close(g[finite].float(), w[finite].float(), rtol=2 ** -7, atol=1e-6,
                                   msg=lambda m, i=index: f"output {i}: {m}")
