"""Keep freed memory in glibc malloc's heap, so large tensors stop faulting in fresh pages on every step.

With its defaults, glibc serves every block above its mmap threshold (128 KiB, rising to at most
32 MiB) from a fresh ``mmap`` and unmaps it on free, and trims the heap's free top back to the OS.
A Vim forward pass allocates and frees hundreds of (B, T, E) activations, so each of them is paid
again in page faults (zeroing 4 KiB at a time in the kernel): on the measuring machine a bfloat16
forward of vim_tiny at 1248 px faulted in about 3.7 GiB of pages, and 43% of the process's CPU time
went to the kernel. Raising both thresholds makes freed blocks stay in the heap for reuse; the process's
RSS then stays at its high-water mark instead of following the live tensors.

The ``vimtune`` command calls :func:`keep_freed_memory` at start-up; library users may call it
themselves. It does nothing on platforms without glibc, when ``VIMTUNE_KEEP_FREED_MEMORY=0``, or when
the user set glibc's own malloc variables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``GLIBC_TUNABLES``), which then keep precedence.
"""

from __future__ import annotations

import ctypes
import os

SWITCH = "VIMTUNE_KEEP_FREED_MEMORY"
GLIBC_MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
DEFAULT_THRESHOLD_BYTES = 1 << 30  # blocks of 1 GiB or more are still mapped (and unmapped) on their own


def _glibc() -> ctypes.CDLL | None:
    """The C library of this process when it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # e.g. Windows
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def keep_freed_memory(threshold_bytes: int = DEFAULT_THRESHOLD_BYTES) -> bool:
    """Serve blocks below ``threshold_bytes`` from the heap and keep up to that much free at its top.

    Returns True when glibc took both settings; False when it was skipped (no glibc, the switch is 0,
    glibc's own malloc variables are set) or glibc refused a value. Calling it again is harmless.
    """
    if os.environ.get(SWITCH, "1") == "0" or any(name in os.environ for name in GLIBC_MALLOC_VARIABLES):
        return False
    libc = _glibc()
    if libc is None:
        return False
    value = ctypes.c_int(min(threshold_bytes, 2**31 - 1))
    return bool(libc.mallopt(M_MMAP_THRESHOLD, value)) and bool(libc.mallopt(M_TRIM_THRESHOLD, value))
