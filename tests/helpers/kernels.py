"""The rule for tests that need a C++ kernel: skip when it cannot be built, except in CI, where that fails."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import pytest


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to a true value (as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def require_kernel(available: Callable[[], bool], what: str) -> None:
    """Build (or load) a kernel through ``available()``; when that fails, fail the calling test in CI and
    skip it elsewhere, with the build's warning as the reason."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = available()
    if ok:
        return
    reason = "; ".join(str(w.message) for w in caught) or "see the RuntimeWarning of its first build"
    message = f"the {what} could not be used: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: a kernel that does not build fails the run)", pytrace=False)
    pytest.skip(message)
