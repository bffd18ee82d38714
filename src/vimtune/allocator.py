"""Keep freed memory in glibc malloc's heap, so large tensors stop faulting in fresh pages on every step.

With its defaults, glibc serves every block above its mmap threshold (128 KiB, rising to at most
32 MiB) from a fresh ``mmap`` and unmaps it on free, and trims the heap's free top back to the OS
once it exceeds the trim threshold. A Vim step allocates and frees hundreds of (B, T, E)
activations, so each of them is paid again in page faults (the kernel zeroes 4 KiB at a time);
``vimtune bench allocator`` measures how much. :func:`keep_freed_memory` serves blocks below 1 GiB
from the heap and turns trimming off, so freed blocks stay there for reuse.

Trimming has to be off, not just rarer: torch asks for 64-byte-aligned blocks, which glibc serves
from a free chunk only when it is somewhat larger than the request, so a block freed by one step
does not fit the same request of the next. The heap grows until freed neighbours have coalesced;
with a finite trim threshold the end of a training step's backward frees more than the threshold
at the heap's top, the heap is trimmed, and the next step grows (and faults) again. The process's
RSS therefore stays at its high-water mark, which is higher than the peak of the live tensors.

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
NEVER_TRIM = -1  # M_TRIM_THRESHOLD value that turns trimming off (mallopt(3))
DEFAULT_MMAP_THRESHOLD_BYTES = 1 << 30  # blocks of 1 GiB or more are still mapped (and unmapped) on their own


def _glibc() -> ctypes.CDLL | None:
    """The C library of this process when it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # e.g. Windows
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def keep_freed_memory(mmap_threshold_bytes: int = DEFAULT_MMAP_THRESHOLD_BYTES) -> bool:
    """Serve blocks below ``mmap_threshold_bytes`` from the heap and never trim the heap.

    Returns True when glibc took both settings; False when it was skipped (no glibc, the switch is 0,
    glibc's own malloc variables are set) or glibc refused a value. Calling it again is harmless.
    """
    if os.environ.get(SWITCH, "1") == "0" or any(name in os.environ for name in GLIBC_MALLOC_VARIABLES):
        return False
    libc = _glibc()
    if libc is None:
        return False
    mapped = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(min(mmap_threshold_bytes, 2**31 - 1)))
    return bool(mapped) and bool(libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(NEVER_TRIM)))
