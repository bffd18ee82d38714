"""Run :mod:`vimtune.bench.measure` in fresh subprocesses and describe the machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

# glibc malloc with a fixed mmap threshold: every block of 128 KiB or more is its own mapping and goes
# back to the OS when freed, so the RSS follows the live tensors instead of the allocator's free lists
# (slower: fresh pages fault in on every large allocation, so never used for timing).
LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run_json_worker(args: list[str], timeout_s: float | None = None, env: dict[str, str] | None = None
                    ) -> dict[str, Any]:
    """Run ``python ARGS`` in a fresh process (``env`` added) and return the last JSON line it printed,
    or ``{"error": ...}`` with the exit code and the end of its output when it failed."""
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout_s, check=False,
        env=os.environ | (env or {}),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"[:500]}
    return json.loads(lines[-1])


def run_measurement(spec: dict[str, Any], timeout_s: float = 1800, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One :mod:`vimtune.bench.measure` run in a fresh Python process (so its peak RSS is its own)."""
    return run_json_worker(["-m", "vimtune.bench.measure", json.dumps(spec)], timeout_s, env)


def fastest(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The result with the fewest ``seconds`` among those without an ``error``; the first one (an error)
    when every run failed."""
    finished = [r for r in results if "error" not in r]
    return min(finished, key=lambda r: r["seconds"]) if finished else results[0]


def write_results(stem: Path, markdown: str, machine: dict[str, Any], command: str, **fields: Any) -> None:
    """Write ``STEM.md`` (``markdown``) and ``STEM.json`` (machine, command and ``fields``); print the markdown.

    Sets in ``machine`` (the bf16 ISA flags) are written as sorted lists.
    """
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(markdown)
    machine = {k: sorted(v) if isinstance(v, set) else v for k, v in machine.items()}
    stem.with_suffix(".json").write_text(json.dumps({"machine": machine, "command": command, **fields}, indent=1))
    print(markdown)


def machine_description() -> dict[str, Any]:
    """CPU model, core count, memory, torch version and thread count of this machine."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "bf16_matmul_isa": _cpu_flags() & {"avx512_bf16", "amx_bf16"},
    }


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            return set(next(line.split(":", 1)[1].split() for line in info if line.startswith("flags")))
    except (OSError, StopIteration):
        return set()


def machine_line(machine: dict[str, Any]) -> str:
    """One-line description for tables."""
    isa = ", ".join(sorted(machine["bf16_matmul_isa"])) or "no bf16 matmul instructions"
    return (f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, torch {machine['torch']}, "
            f"{machine['threads']} threads ({isa})")
