"""Dtypes, strides, block sizes and output buffers shared by the Triton kernel launchers."""

from __future__ import annotations

import torch
import triton
from torch import Tensor

# Channels per program on a GPU: BLOCK_E x BLOCK_N state values spread over num_warps x 32 threads.
GPU_STATE_VALUES = 512
GPU_WARPS = 4
# Under the CPU interpreter a program is a Python loop over numpy ops, so fewer, wider programs are faster.
INTERPRETER_BLOCK_E = 256


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 when any given tensor is float64, else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def strides3(t: Tensor | None) -> tuple[int, int, int]:
    """Strides of a 3-d tensor, or zeros for an absent one (the kernel then never reads it)."""
    return (0, 0, 0) if t is None else tuple(t.stride())


def new_activation(like: Tensor, dtype: torch.dtype) -> Tensor:
    """An empty (B, X, L) tensor in ``dtype`` stored time-major, (B, L, X) in memory, when ``like`` has unit
    channel stride (a transposed time-major tensor), else contiguous (B, X, L)."""
    batch, channels, length = like.shape
    if like.stride(1) == 1 and length > 1:
        return like.new_empty(batch, length, channels, dtype=dtype).transpose(1, 2)
    return like.new_empty(batch, channels, length, dtype=dtype)


def block_sizes(channels: int, n_state: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_E channels per program, BLOCK_N >= n_state, num_warps), all powers of two."""
    block_n = triton.next_power_of_2(max(n_state, 2))
    if device.type == "cpu":
        return min(triton.next_power_of_2(channels), INTERPRETER_BLOCK_E), block_n, 1
    block_e = max(1, min(triton.next_power_of_2(channels), GPU_STATE_VALUES // block_n))
    return block_e, block_n, GPU_WARPS
