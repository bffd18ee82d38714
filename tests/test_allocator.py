"""vimtune.allocator: freed blocks are reused without new page faults; the opt-outs leave malloc alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vimtune import allocator

pytestmark = pytest.mark.skipif(allocator._glibc() is None, reason="glibc malloc only (mallopt)")

# Allocates and frees a 64 MiB tensor (above glibc's largest dynamic mmap threshold) 24 times and prints
# the minor page faults of the last eight rounds, after calling keep_freed_memory when asked. With the
# setting the heap first grows for a few rounds (up to nine in our runs: each freed block is a little
# too small for torch's next 64-byte-aligned request until freed neighbours coalesce), then reuses.
_WORKER = """
import json, resource, sys, torch
from vimtune.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(24):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(16 * 2**20)  # 64 MiB, every page written
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": sum(faults[16:])}))
"""
_PAGES_PER_BLOCK = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")


def _run_worker(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in (*allocator.GLIBC_MALLOC_VARIABLES, allocator.SWITCH)}
    proc = subprocess.run([sys.executable, "-c", _WORKER, mode], capture_output=True, text=True, check=True,
                          env=clean | env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults() -> None:
    default, kept = _run_worker("default"), _run_worker("keep")
    assert default["faults"] >= 5 * _PAGES_PER_BLOCK  # glibc's default maps every round afresh
    assert kept["applied"] is True
    assert kept["faults"] < _PAGES_PER_BLOCK // 10  # the last eight rounds reuse freed pages


def test_switch_off_leaves_malloc_alone() -> None:
    result = _run_worker("keep", **{allocator.SWITCH: "0"})
    assert result["applied"] is False
    assert result["faults"] >= 5 * _PAGES_PER_BLOCK


@pytest.mark.parametrize("variable", allocator.GLIBC_MALLOC_VARIABLES)
def test_user_glibc_settings_take_precedence(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "glibc.malloc.mmap_threshold=131072" if variable == "GLIBC_TUNABLES" else "131072")
    assert allocator.keep_freed_memory() is False
