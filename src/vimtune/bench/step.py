"""``vimtune bench step``: the training step of Vim + SVP against a ViT fully fine-tuned, float32 and bf16.

One training step (forward, cross-entropy, backward, AdamW) at batch 32 and 224 px of each setting,
default ``vim_small_patch16_224`` with SVP and the plain ``deit_small_patch16_224`` with every parameter
trained (full fine-tuning; what issue #17's target compares), in float32 and under bfloat16 autocast.
Every measurement runs in a fresh process (:mod:`vimtune.bench.measure`: a warm-up step, then the
timed steps); ``--rounds`` passes take the settings in turn so that drift of the machine hits both
alike, and a row keeps its fastest round. Each row gives the wall time and the CPU time (user + system
of all the process's threads) of a step; ``--clock cpu`` takes the ratio from CPU time, which other work
on a shared machine disturbs less than wall time (CPU time also counts OpenMP threads spin-waiting).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from vimtune.bench.runner import (
    bench_command,
    fastest,
    load_text,
    machine_line,
    machine_with_load,
    run_measurement,
    write_results,
)

DTYPES = ("float32", "bfloat16")
CLOCKS = {"wall": "seconds", "cpu": "cpu_seconds"}  # --clock -> the measurement's field


def measure_steps(settings: list[tuple[str, str | None]], dtypes: list[str], batch: int, img_size: int, repeats: int,
                  rounds: int, threads: int | None, clock: str) -> list[dict[str, Any]]:
    """One row per (dtype, model, method): the fastest round by ``clock`` (``seconds`` or ``cpu_seconds``)."""
    rows = []
    for dtype in dtypes:
        results: dict[tuple[str, str | None], list[dict[str, Any]]] = {setting: [] for setting in settings}
        for round_index in range(rounds):
            for model, method in settings:
                spec = {"model": model, "model_kwargs": {"img_size": img_size, "num_classes": 10}, "method": method,
                        "mode": "train", "batch": batch, "img_size": img_size, "dtype": dtype, "repeats": repeats,
                        "warmup": 1, "threads": threads}
                results[model, method].append(run_measurement(spec))
                print(json.dumps({"round": round_index, "dtype": dtype, "model": model, "method": method,
                                  "result": results[model, method][-1]}), flush=True)
        for (model, method), rounds_run in results.items():
            rows.append({"dtype": dtype, "model": model, "method": method or "full (plain model)",
                         "step": fastest(rounds_run, clock), "rounds": rounds_run})
    return rows


def to_markdown(rows: list[dict[str, Any]], machine: dict[str, Any], command: str, clock: str, batch: int,
                img_size: int) -> str:
    """Wall and CPU seconds per step of each row; each row's step time over the first setting's of its dtype."""
    field = CLOCKS[clock]
    lines = [
        f"Machine: {machine_line(machine)}; {load_text(machine)} "
        "(the machine was shared with other work).",
        f"Command: `{command}`. One training step (forward, cross-entropy, backward, AdamW) at batch {batch}, "
        f"{img_size} px, fresh process per measurement, fastest round by {clock} time. `wall s` = best wall time "
        "of a step; `CPU s` = least CPU time of a step (all threads); `vs last` = this row's "
        f"{clock} time / the last row's of the same dtype.",
        "",
        "| dtype | model | method | wall s | CPU s | vs last |",
        "|---|---|---|---:|---:|---:|",
    ]
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        group = [r for r in rows if r["dtype"] == dtype]
        base = group[-1]["step"].get(field)
        for r in group:
            step = r["step"]
            if "error" in step:
                lines.append(f"| {dtype} | {r['model']} | {r['method']} | {step['error'][:80]} | - | - |")
                continue
            ratio = f"{step[field] / base:.2f}x" if base else "-"
            lines.append(f"| {dtype} | {r['model']} | {r['method']} | {step['seconds']:.2f} | "
                         f"{step['cpu_seconds']:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vimtune bench step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["vim_small_patch16_224:svp", "deit_small_patch16_224"],
                        help="MODEL:METHOD, or MODEL alone for full fine-tuning of the plain timm model; the ratio "
                        "column divides by the last one")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="which time picks the fastest round and makes the ratio (cpu: on a shared machine)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step"),
                        help="output stem: writes STEM.<cpu>.md and .json (<cpu>: model and ISA)")
    args = parser.parse_args(argv)
    settings = []
    for item in args.settings:
        model, sep, method = item.partition(":")
        if not model or (sep and not method):
            parser.error(f"--settings: {item!r} is not MODEL or MODEL:METHOD (e.g. vim_small_patch16_224:svp)")
        settings.append((model, method or None))
    load_before = os.getloadavg()[0]
    rows = measure_steps(settings, args.dtypes, args.batch, args.img_size, args.repeats, args.rounds, args.threads,
                         CLOCKS[args.clock])
    machine = machine_with_load(load_before)
    if args.threads:
        machine["threads"] = args.threads
    command = bench_command("step", argv)
    markdown = to_markdown(rows, machine, command, args.clock, args.batch, args.img_size)
    write_results(args.out, markdown, machine, command, rows=rows, clock=args.clock)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
