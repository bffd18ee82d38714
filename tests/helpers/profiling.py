"""Which operators a piece of code ran, as the kernel tests assert it (a kernel used, or left to torch)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def profiled_ops(fn: Callable[[], object]) -> set[str]:
    """Names of the operators ``fn()`` ran (``torch.profiler``, CPU)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}
