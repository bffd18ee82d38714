"""``vimtune bench allocator``: what keeping freed blocks in glibc's heap (:mod:`vimtune.allocator`) changes.

Each workload runs in fresh processes with glibc's defaults (``VIMTUNE_KEEP_FREED_MEMORY=0``) and with
vimtune's setting, the two taking turns in every round so that machine drift hits both. Per process,
over its timed steps: the best step time, minor page faults per step, the kernel's share of the
process's CPU time, and the peak RSS above the process's RSS before the model was built (freed blocks
the allocator keeps count). A row reports each setting's fastest round and, beside it, the median step of
its slowest round: on some virtual machines fresh pages cost far more, and under glibc's defaults a whole
process can fault on every step while another does not. Writes ``STEM.md`` and ``STEM.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

from vimtune.allocator import SWITCH
from vimtune.bench.runner import fastest, load_text, machine_line, machine_with_load, run_measurement, write_results

SETTINGS = {"glibc defaults": {SWITCH: "0"}, "freed blocks kept": {SWITCH: "1"}}
_VIM_TINY_1248 = {"model": "vim_tiny_patch16_224", "model_kwargs": {"img_size": 1248}, "img_size": 1248,
                  "mode": "infer", "batch": 1, "repeats": 3, "warmup": 1}
WORKLOADS: dict[str, dict[str, Any]] = {
    "vim_tiny, 1248 px, batch 1, bf16 inference": _VIM_TINY_1248 | {"dtype": "bfloat16"},
    "vim_tiny, 1248 px, batch 1, float32 inference": _VIM_TINY_1248 | {"dtype": "float32"},
    "vim_tiny, 224 px, batch 8, float32 inference": {
        "model": "vim_tiny_patch16_224", "img_size": 224, "mode": "infer", "batch": 8, "dtype": "float32",
        "repeats": 10, "warmup": 2},
    "vim_small, 224 px, batch 32, full fine-tuning step": {
        "model": "vim_small_patch16_224", "model_kwargs": {"num_classes": 100}, "img_size": 224,
        "mode": "train", "method": "full", "batch": 32, "repeats": 3, "warmup": 2},  # the heap grows in the first steps
}


def measure_all(workloads: dict[str, dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    """One row per workload: ``{"workload": name, setting: [result of each round], ...}``."""
    rows = {name: {"workload": name} for name in workloads}
    for round_index in range(rounds):
        for name, spec in workloads.items():
            settings = list(SETTINGS) if round_index % 2 == 0 else list(SETTINGS)[::-1]
            for setting in settings:
                result = run_measurement(spec, env=SETTINGS[setting])
                rows[name].setdefault(setting, []).append(result)
                print(json.dumps({"round": round_index, "workload": name, "setting": setting, **result}), flush=True)
    return list(rows.values())


def slowest_round(results: list[dict[str, Any]]) -> float:
    """The largest median step time among the rounds that finished (one fresh process each)."""
    return max(statistics.median(r["seconds_all"]) for r in results if "error" not in r)


def to_markdown(rows: list[dict[str, Any]], machine: dict[str, Any], command: str, rounds: int) -> str:
    """Step time, page faults, kernel CPU share and peak RSS under both settings, per workload."""
    default, kept = SETTINGS
    lines = [
        f"Machine: {machine_line(machine)}; {load_text(machine)}. Command: `{command}`.",
        f"Each workload in fresh processes with glibc's malloc defaults and with `{SWITCH}=1` (vimtune's setting),",
        f"taking turns, fastest of {rounds} round(s) (step s: its best step); slowest round = the median step of the",
        "round (process) whose median step was slowest;",
        "faults and kernel share over the timed steps; RSS = peak RSS above the process's RSS before the model",
        "was built, freed blocks kept by the allocator included.",
        "",
        "| workload | step s, defaults | step s, kept | speed-up | slowest round s, defaults | slowest round s, kept "
        "| minor faults/step, defaults "
        "| minor faults/step, kept | kernel CPU share, defaults | kernel CPU share, kept | RSS MiB, defaults "
        "| RSS MiB, kept |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        a, b = fastest(row[default]), fastest(row[kept])
        if "error" in a or "error" in b:
            lines.append(f"| {row['workload']} | error | error |" + " - |" * 9)
            continue
        lines.append(
            f"| {row['workload']} | {a['seconds']:.3f} | {b['seconds']:.3f} | {a['seconds'] / b['seconds']:.2f}x | "
            f"{slowest_round(row[default]):.3f} | {slowest_round(row[kept]):.3f} | "
            f"{a['minor_faults_per_step']:,.0f} | {b['minor_faults_per_step']:,.0f} | "
            f"{a['kernel_cpu_share']:.0%} | {b['kernel_cpu_share']:.0%} | "
            f"{a['peak_extra_bytes'] / 2**20:.0f} | {b['peak_extra_bytes'] / 2**20:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vimtune bench allocator", description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=1, help="passes over the workloads, settings alternating")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/allocator"),
                        help="output stem: writes STEM.<cpu>.md and .json (<cpu>: model and ISA)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = measure_all({name: WORKLOADS[name] for name in args.workloads}, args.rounds)
    machine = machine_with_load(load_before)
    command = ("vimtune bench allocator " + " ".join(argv or [])).strip()
    write_results(args.out, to_markdown(rows, machine, command, args.rounds), machine, command, rows=rows)
    return 0
