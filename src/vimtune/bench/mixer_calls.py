"""Inputs and calls of the time-major mixer scan kernels, for the kernel scripts in ``scripts/``.

``scripts/ab_mixer_kernels.py`` times two builds of the kernels on these inputs; ``scripts/scan_in_cache.py``
times one build on them and on copies whose rows all repeat the first one (every read then hits the L1 cache).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

STATE = 16  # N, Vim's state size


def scan_inputs(batch: int, length: int, channels: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random time-major scan inputs as the models pass them: x, z and B, C are column slices of wider rows.

    Activations u, delta, z, dout: (batch, length, channels); B, C: (batch, length, STATE); A: (channels,
    STATE); D, delta_bias: (channels,)."""
    g = torch.Generator().manual_seed(0)
    xz = torch.randn(batch, length, 2 * channels, generator=g).to(dtype)
    bc = torch.randn(batch, length, 2 * STATE, generator=g).to(dtype)
    return {
        "u": xz[..., :channels], "delta": (torch.randn(batch, length, channels, generator=g) * 0.5 - 1).to(dtype),
        "A": -torch.rand(channels, STATE, generator=g) * 4 - 0.5, "B": bc[..., :STATE], "C": bc[..., STATE:],
        "D": torch.randn(channels, generator=g), "z": xz[..., channels:],
        "delta_bias": torch.randn(channels, generator=g) * 0.1,
        "dout": torch.randn(batch, length, channels, generator=g).to(dtype),
    }


def repeat_first_row(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``inputs`` with every (batch, time) row of the activations replaced by the first one, as a stride-0
    view: the same shapes and unit stride over the last dimension, but the kernels read one row over and over."""
    return {name: t[:1, :1].expand_as(t) if t.dim() == 3 else t for name, t in inputs.items()}


def calls(ops: object, x: dict[str, torch.Tensor]) -> dict[str, Callable[[], object]]:
    """The forward and backward kernel calls of ``ops`` on inputs ``x`` (forward direction, softplus on)."""
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True, False)
    return {"forward": lambda: ops.scan_fwd(*args, None), "backward": lambda: ops.scan_bwd(*args, x["dout"], True)}
