"""Run :mod:`vimtune.bench.measure` in fresh subprocesses and describe the machine."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from vimtune.bench.source import run_source
from vimtune.cpuinfo import cpu_model_name, cpuinfo_fields

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


def fastest(results: list[dict[str, Any]], key: str = "seconds") -> dict[str, Any]:
    """The result with the least ``key`` (e.g. ``seconds`` or ``cpu_seconds``) among those without an
    ``error``; the first one (an error) when every run failed."""
    finished = [r for r in results if "error" not in r]
    return min(finished, key=lambda r: r[key]) if finished else results[0]


def result_stem(stem: Path, machine: dict[str, Any]) -> Path:
    """``STEM.<cpu slug>``: each CPU model (and ISA) gets its own result files, so that a run on another
    machine adds files beside the committed ones instead of overwriting them."""
    return stem.parent / f"{stem.name}.{cpu_slug(machine)}"


def write_results(stem: Path, markdown: str, machine: dict[str, Any], command: str, **fields: Any) -> Path:
    """Write ``STEM.<cpu slug>.md`` (``markdown``) and ``.json`` (machine, command, the vimtune commit that ran
    as ``source`` (:func:`run_source`) and ``fields``); print the markdown; return the stem written
    (``STEM.<cpu slug>``, see :func:`result_stem`).

    Sets in ``machine`` (the ISA flags) are written as sorted lists.
    """
    out = result_stem(stem, machine)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".md").write_text(markdown)
    machine = {k: sorted(v) if isinstance(v, set) else v for k, v in machine.items()}
    out.with_name(out.name + ".json").write_text(
        json.dumps({"machine": machine, "command": command, "source": run_source(), **fields}, indent=1))
    print(markdown)
    return out


def machine_description() -> dict[str, Any]:
    """CPU model (``model name`` of /proc/cpuinfo) with its family / model / stepping numbers and vector ISA,
    core count, memory, torch version and thread count of this machine."""
    fields = cpuinfo_fields()
    cpu = cpu_model_name()
    flags = set(fields.get("flags", "").split())
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cpu_id": " ".join(f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields),
        "isa": [name for flag, name in ISA_FLAGS.items() if flag in flags],
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "bf16_matmul_isa": flags & {"avx512_bf16", "amx_bf16"},
    }


# /proc/cpuinfo flag -> ISA name used in result files, narrowest first (the last one a CPU has names its files).
ISA_FLAGS = {"avx2": "avx2", "avx512f": "avx512", "avx512_bf16": "avx512_bf16", "amx_bf16": "amx_bf16"}


def machine_with_load(load_before: float) -> dict[str, Any]:
    """:func:`machine_description` with ``load_average_1min``: ``load_before`` (taken when the run began) and now."""
    return machine_description() | {"load_average_1min": [load_before, os.getloadavg()[0]]}


def load_text(machine: dict[str, Any]) -> str:
    """``"1-min load average at start / end: a / b (...)"`` from a :func:`machine_with_load` (nan where absent),
    the parenthesis saying whether other work shared the machine (a load above the thread count plus one)."""
    load = machine.get("load_average_1min", (float("nan"), float("nan")))
    shared = max(load) > machine.get("threads", 1) + 1
    verdict = "above the thread count: other work shared the machine" if shared else "no other work of note"
    return f"1-min load average at start / end: {load[0]:.1f} / {load[1]:.1f} ({verdict})"


def bench_command(name: str, argv: list[str] | None) -> str:
    """The command line of ``vimtune bench NAME`` as given (``argv``, else the process's arguments)."""
    return (f"vimtune bench {name} " + " ".join(argv if argv is not None else sys.argv[1:])).strip()


def cpu_slug(machine: dict[str, Any]) -> str:
    """File-name tag of the CPU: its model name and widest ISA, lower case, e.g. ``amd-epyc-9654-avx512-bf16`` or
    ``intel-xeon-platinum-8480-amx-bf16``. The ISA is part of it because a virtual machine may report only
    the vendor's family name (two different "AMD EPYC" machines, one with AVX-512 and one without); when
    the name has no model number, its family and model numbers are added, as in
    ``amd-epyc-family25-model17-avx512-bf16`` (Zen 4 and Zen 5 machines both say "AMD EPYC" and have the
    same ISA flags). Results measured before those numbers were recorded keep the tag without them."""
    model = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$|\d+-core processor", "", machine["cpu"], flags=re.IGNORECASE)
    numbers = re.match(r"cpu family (\d+) model (\d+)", machine.get("cpu_id") or "")
    if numbers and not re.search(r"\d", model):
        model += f" family{numbers[1]} model{numbers[2]}"
    isa = machine.get("isa") or sorted(machine.get("bf16_matmul_isa", ()))
    words = re.findall(r"[a-z0-9]+", f"{model} {isa[-1] if isa else 'baseline'}".lower())
    return "-".join(words)


def machine_line(machine: dict[str, Any]) -> str:
    """One-line description for tables: CPU model (family / model numbers), vector ISA, cores, memory, torch."""
    cpu_id = f" ({machine['cpu_id']})" if machine.get("cpu_id") else ""
    isa = ", ".join(machine.get("isa") or sorted(machine["bf16_matmul_isa"])) or "no AVX2"
    return (f"{machine['cpu']}{cpu_id}, ISA {isa}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
            f"torch {machine['torch']}, {machine['threads']} threads")
