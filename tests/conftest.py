"""Fixtures shared by the test modules: the C++ kernels (built once per session, never at collection) and
the thread count of a test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from helpers.kernels import require_kernel
from vimtune.ops.mixer_cpu import mixer_kernels_available
from vimtune.ops.prompt_update_cpu import prompt_kernel_available
from vimtune.ops.rms_norm_cpu import norm_kernel_available
from vimtune.ops.scan_cpu import cpu_kernel_available


@pytest.fixture(scope="session")
def scan_kernel() -> None:
    """The C++ CPU selective scan (``vimtune.ops.scan_cpu``); skips, or in CI fails, when it does not build."""
    require_kernel(cpu_kernel_available, "C++ CPU selective-scan kernel")


@pytest.fixture(scope="session")
def mixer_kernels() -> None:
    """The C++ CPU mixer kernels (``vimtune.ops.mixer_cpu``); skips, or in CI fails, when they do not build."""
    require_kernel(mixer_kernels_available, "C++ CPU mixer kernels")


@pytest.fixture(scope="session")
def norm_kernel() -> None:
    """The C++ CPU RMSNorm (``vimtune.ops.rms_norm_cpu``); skips, or in CI fails, when it does not build."""
    require_kernel(norm_kernel_available, "C++ CPU RMSNorm kernel")


@pytest.fixture(scope="session")
def prompt_kernel() -> None:
    """The C++ CPU prompt update (``vimtune.ops.prompt_update_cpu``); skips, or in CI fails, when it does not
    build."""
    require_kernel(prompt_kernel_available, "C++ CPU prompt-update kernel")


@pytest.fixture
def torch_threads() -> Iterator[Callable[[int], None]]:
    """``set(n)``: use n intra-op threads in this test; the count in force before is restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)
