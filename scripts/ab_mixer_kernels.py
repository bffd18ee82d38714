"""Time the mixer's C++ scan kernels of a git revision against another's (or the working tree's), side by side.

Builds ``src/vimtune/ops/csrc/mixer_cpu.cpp`` (with its headers) as it was at ``--base`` (and at ``--new``)
under other ``TORCH_LIBRARY`` namespaces, next to the working tree's build, checks that both give the same
outputs and gradients on random inputs, then times ``scan_fwd`` and ``scan_bwd`` of the two in turn, one call
each per round (:func:`vimtune.bench.scan.time_steps`, best call of each), with freed memory kept for reuse as
the vimtune command keeps it. Prints a Markdown table with the machine line. Example (the rows prefetch of issue #17):

    python scripts/ab_mixer_kernels.py --base f6328cd --new d4aa4c1 --shapes 8,197,384 32,197,768
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from vimtune.allocator import keep_freed_memory
from vimtune.bench.mixer_calls import add_timing_arguments, calls, cases, side_by_side_ms, timing_options
from vimtune.bench.runner import load_text, machine_line, machine_with_load
from vimtune.ops._build import load_cpu_extension
from vimtune.ops.mixer_cpu import _ops

CSRC = Path("src/vimtune/ops/csrc")


def revision_kernels(rev: str, folder: Path, namespace: str) -> object:
    """The mixer kernels of git revision ``rev``, built from a copy in ``folder`` as ``namespace``."""
    root = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                               check=True).stdout.strip())
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:{CSRC}"], capture_output=True, text=True,
                           check=True, cwd=root).stdout.split()
    folder.mkdir()
    for name in names:
        text = subprocess.run(["git", "show", f"{rev}:{CSRC / name}"], capture_output=True, text=True,
                              check=True, cwd=root).stdout
        renamed = text.replace("TORCH_LIBRARY(vimtune_mixer_cpu,", f"TORCH_LIBRARY({namespace},")
        (folder / name).write_text(renamed)
    ops = load_cpu_extension(namespace, folder / "mixer_cpu.cpp", what=f"mixer kernels of {rev}",
                             fallback="nothing to compare.")
    if ops is None:
        raise SystemExit(f"the mixer kernels of {rev} could not be built")
    return ops


def max_difference(base: object, new: object) -> float:
    """Largest difference between the two results over all outputs, relative to each output's largest value."""
    pairs = zip(base, new, strict=True) if isinstance(base, tuple) else [(base, new)]
    return max(((a.float() - b.float()).abs().max() / a.float().abs().max().clamp_min(1e-30)).item()
               for a, b in pairs if a.numel())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git revision whose kernels are the baseline")
    parser.add_argument("--new", help="git revision whose kernels are compared with it (default: the working tree)")
    add_timing_arguments(parser)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        base = revision_kernels(args.base, Path(folder) / "base", "vimtune_mixer_base")
        new = revision_kernels(args.new, Path(folder) / "new", "vimtune_mixer_new") if args.new else _ops()
        if new is None:
            raise SystemExit("the working tree's mixer kernels could not be built")
        for shape, dtype_name, x in cases(args):
            base_calls, new_calls = calls(base, x), calls(new, x)
            difference = {mode: max_difference(base_calls[mode](), new_calls[mode]()) for mode in base_calls}
            for mode, base_ms, new_ms in side_by_side_ms(base_calls, new_calls, args):
                rows.append(f"| {shape} | {dtype_name} | {mode} | {base_ms:.2f} | {new_ms:.2f} | "
                            f"{new_ms / base_ms:.2f} | {difference[mode]:.1e} |")
    machine = machine_with_load(load_before)
    print(f"Machine: {machine_line(machine)}; {load_text(machine)}.")
    new_option = f" --new {args.new}" if args.new else ""
    print(f"Command: `python scripts/ab_mixer_kernels.py --base {args.base}{new_option} {timing_options(args)}`\n")
    new_name = args.new or "working tree"
    print(f"| shape (B, T, E, N) | dtype | kernel | {args.base} ms | {new_name} ms | ratio | max rel. difference |")
    print("|---|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
