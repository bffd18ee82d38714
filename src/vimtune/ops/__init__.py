"""Numerical kernels: the selective scan and its backends."""

from vimtune.ops.selective_scan import (
    BACKENDS,
    available_backends,
    resolve_backend,
    selective_scan,
)

__all__ = ["BACKENDS", "available_backends", "resolve_backend", "selective_scan"]
