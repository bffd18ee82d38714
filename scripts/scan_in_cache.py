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
from vimtune.bench.mixer_calls import (
    add_timing_arguments,
    calls,
    cases,
    repeat_first_row,
    side_by_side_ms,
    timing_options,
)
from vimtune.bench.runner import load_text, machine_line, machine_with_load
from vimtune.ops.mixer_cpu import _ops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    ops = _ops()
    if ops is None:
        raise SystemExit("the working tree's mixer kernels could not be built")
    load_before = os.getloadavg()[0]
    rows = []
    for shape, dtype_name, inputs in cases(args):
        for mode, real_ms, cached_ms in side_by_side_ms(calls(ops, inputs), calls(ops, repeat_first_row(inputs)), args):
            rows.append(f"| {shape} | {dtype_name} | {mode} | {real_ms:.2f} | {cached_ms:.2f} | "
                        f"{cached_ms / real_ms:.2f} |")
    machine = machine_with_load(load_before)
    print(f"Machine: {machine_line(machine)}; {load_text(machine)}.")
    print(f"Command: `python scripts/scan_in_cache.py {timing_options(args)}`\n")
    print("| shape (B, T, E, N) | dtype | kernel | inputs ms | rows in cache ms | ratio |")
    print("|---|---|---|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
