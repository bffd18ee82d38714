"""Is the mixer's scan limited by memory or by its arithmetic? Times the working tree's kernels on random
inputs and on the same inputs with every (batch, time) row replaced by the first one, side by side.

The second set are stride-0 views (:func:`vimtune.bench.mixer_calls.repeat_first_row`): the kernels do exactly
the same arithmetic (no branch depends on a value) and write the same outputs, but every row they read is
already in the L1 cache. If the two times agree, no change to how the kernels move data can make them
faster; only less arithmetic per state update can. Prints a Markdown table with the machine line. Example:

    python scripts/scan_in_cache.py --shapes 8,197,384 1,6085,384 --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import os

import torch

from vimtune.allocator import keep_freed_memory
from vimtune.bench.mixer_calls import STATE, calls, repeat_first_row, scan_inputs
from vimtune.bench.runner import load_text, machine_line, machine_with_load
from vimtune.bench.scan import time_steps
from vimtune.ops.mixer_cpu import _ops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["8,197,384"], help="B,T,E per shape (N = 16)")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per kernel, at least")
    parser.add_argument("--budget-s", type=float, default=5.0, help="time per kernel and mode, at most")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    ops = _ops()
    if ops is None:
        raise SystemExit("the working tree's mixer kernels could not be built")
    load_before = os.getloadavg()[0]
    rows = []
    for shape in args.shapes:
        batch, length, channels = (int(v) for v in shape.split(","))
        for dtype_name in args.dtypes:
            inputs = scan_inputs(batch, length, channels, getattr(torch, dtype_name))
            real, in_cache = calls(ops, inputs), calls(ops, repeat_first_row(inputs))
            for mode in ("forward", "backward"):
                times = time_steps({"inputs": real[mode], "in cache": in_cache[mode]}, args.repeats, args.budget_s)
                real_ms, cached_ms = times["inputs"]["seconds"] * 1e3, times["in cache"]["seconds"] * 1e3
                rows.append(f"| ({batch}, {length}, {channels}, {STATE}) | {dtype_name} | {mode} | {real_ms:.2f} | "
                            f"{cached_ms:.2f} | {cached_ms / real_ms:.2f} |")
    machine = machine_with_load(load_before)
    print(f"Machine: {machine_line(machine)}; {load_text(machine)}.")
    print(f"Command: `python scripts/scan_in_cache.py --shapes {' '.join(args.shapes)} --dtypes "
          f"{' '.join(args.dtypes)} --threads {args.threads} --repeats {args.repeats} --budget-s {args.budget_s:g}`\n")
    print("| shape (B, T, E, N) | dtype | kernel | inputs ms | rows in cache ms | ratio |")
    print("|---|---|---|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
