"""The vimtune commit that a benchmark ran, as its result files record it (``source`` in the JSON)."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Any


def source_revision(root: Path | None = None) -> dict[str, Any] | None:
    """``{"commit": SHA, "src_modified": bool}``: the git commit of the vimtune checkout ``root`` (default: the
    one this code runs from), and whether tracked files under its ``src/`` differ from that commit (the
    kernels that ran were not the commit's). None when it is not a git checkout with ``src/vimtune`` (an
    installed wheel) or git is missing or refuses. git's variables that would point it at another
    repository (``GIT_DIR``, ...) are dropped, and ``git status`` takes no lock."""
    root = root or Path(__file__).resolve().parents[3]  # src/vimtune/bench/source.py -> the checkout
    if not (root / ".git").exists() or not (root / "src" / "vimtune").is_dir():
        return None
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    git = ["git", "--no-optional-locks", "-C", str(root)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                timeout=30, env=env)
        status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "src"],
                                capture_output=True, text=True, check=True, timeout=30, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "src_modified": bool(status.stdout.strip())}


@functools.cache
def run_source() -> dict[str, Any] | None:
    """:func:`source_revision` of this process's checkout, read once: ``vimtune bench`` reads it before the
    benchmark starts, so that a commit or an edit during a long run does not change what its files record."""
    return source_revision()
