"""Random selective-scan problems shared by the scan tests."""

from __future__ import annotations

import torch


def make_scan_inputs(
    batch: int, channels: int, length: int, state: int, dtype: torch.dtype = torch.float64,
    seed: int = 0, delta_scale: float = 1.0, with_optional: bool = True,
) -> dict[str, torch.Tensor | None]:
    """Inputs with Mamba's sign conventions (A < 0); ``delta_scale`` stretches the raw step sizes."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    return {
        "u": rnd(batch, channels, length),
        "delta": rnd(batch, channels, length) * delta_scale,
        "A": -torch.exp(rnd(channels, state) * 0.5).to(dtype),
        "B": rnd(batch, state, length),
        "C": rnd(batch, state, length),
        "D": rnd(channels) if with_optional else None,
        "z": rnd(batch, channels, length) if with_optional else None,
        "delta_bias": rnd(channels) * 0.5 if with_optional else None,
    }
