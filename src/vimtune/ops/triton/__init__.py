"""Triton kernels of the Vim mixer (selective scan, causal depthwise conv + SiLU), forward and backward.

They run compiled on CUDA tensors, and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``
set before the kernel modules are imported), which is how the test suite checks them without a GPU.
This module imports no kernel: it only says whether they can run.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` asks for Triton's CPU interpreter (read at kernel import)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@functools.cache
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_available(device: torch.device | str) -> bool:
    """True when the Triton kernels can run on tensors of ``device``: CUDA with ``triton`` installed, or
    CPU under the interpreter."""
    device = torch.device(device)
    if not _triton_importable():
        return False
    if device.type == "cuda":
        return torch.cuda.is_available() and not interpreter_enabled()
    return device.type == "cpu" and interpreter_enabled()
