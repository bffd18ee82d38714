"""Where the shared real data (CIFAR-10, vtab-mini) lives, for the few tests that read it.

``VIMTUNE_SHARED_DATA`` names the folder; without it, ``shared/data`` next to the repository's folder
(the project machine's layout). Tests that need it skip, naming the path, when it is not there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV_VAR = "VIMTUNE_SHARED_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_root() -> Path:
    """The shared data folder (it may not exist)."""
    return Path(os.environ.get(ENV_VAR) or REPO_ROOT.parent / "shared" / "data")


def require_shared(*parts: str, marker: str) -> Path:
    """``shared_data_root() / parts``; skips the calling test unless ``marker`` (a file or folder in it) exists."""
    path = shared_data_root().joinpath(*parts)
    if not (path / marker).exists():
        pytest.skip(f"shared data not found: {path / marker} (set {ENV_VAR} to the shared data folder)")
    return path
