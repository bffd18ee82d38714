"""Time the C++ scan kernels of a git revision against another's (or the working tree's), side by side.

Builds ``src/vimtune/ops/csrc/mixer_cpu.cpp`` (``--kernel mixer``, the models' kernels) or
``selective_scan_cpu.cpp`` (``--kernel selective_scan``), with their headers, as it was at ``--base`` (and at
``--new``) under other ``TORCH_LIBRARY`` namespaces, next to the working tree's build, checks that both give the
same outputs and gradients on random inputs, then times the two in turn, one call each per round
(:func:`vimtune.bench.scan.time_steps`, best call of each), with freed memory kept for reuse as the vimtune
command keeps it: the mixer's ``scan_fwd`` and ``scan_bwd``, or ``selective_scan_cpu``'s forward and forward +
backward (float32; the wrapper is the working tree's, so the forward + backward of revisions before b28180d,
whose kernel returned its partial sums or its sums in float32, stops with a size or dtype error). Prints a
Markdown table with the machine line. Example (the rows prefetch of issue #17):

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
from vimtune.bench.mixer_calls import (
    add_timing_arguments,
    calls,
    cases,
    selective_scan_calls,
    side_by_side_ms,
    timing_options,
)
from vimtune.bench.runner import load_text, machine_line, machine_with_load
from vimtune.ops import mixer_cpu, scan_cpu
from vimtune.ops._build import load_cpu_extension

CSRC = Path("src/vimtune/ops/csrc")
# --kernel: its source file, its TORCH_LIBRARY namespace, the working tree's build, the calls that time it
KERNELS = {
    "mixer": ("mixer_cpu.cpp", "vimtune_mixer_cpu", mixer_cpu._ops, calls),
    "selective_scan": ("selective_scan_cpu.cpp", "vimtune_scan_cpu", scan_cpu._ops, selective_scan_calls),
}


def revision_kernels(rev: str, folder: Path, namespace: str, kernel: str) -> object:
    """The ``kernel`` kernels (a key of KERNELS) of git revision ``rev``, built from a copy in ``folder`` as
    ``namespace``."""
    source, library = KERNELS[kernel][:2]
    root = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                               check=True).stdout.strip())
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:{CSRC}"], capture_output=True, text=True,
                           check=True, cwd=root).stdout.split()
    folder.mkdir()
    for name in names:
        text = subprocess.run(["git", "show", f"{rev}:{CSRC / name}"], capture_output=True, text=True,
                              check=True, cwd=root).stdout
        renamed = text.replace(f"TORCH_LIBRARY({library},", f"TORCH_LIBRARY({namespace},")
        (folder / name).write_text(renamed)
    ops = load_cpu_extension(namespace, folder / source, what=f"{kernel} kernels of {rev}",
                             fallback="nothing to compare.")
    if ops is None:
        raise SystemExit(f"the {kernel} kernels of {rev} could not be built")
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
    parser.add_argument("--kernel", choices=list(KERNELS), default="mixer",
                        help="which kernels: the models' mixer kernels or selective_scan's (float32 only)")
    add_timing_arguments(parser)
    args = parser.parse_args()
    if args.kernel == "selective_scan" and args.dtypes != ["float32"]:
        parser.error("--kernel selective_scan runs in float32 only: give --dtypes float32")
    own_build, kernel_calls = KERNELS[args.kernel][2:]
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        prefix = f"vimtune_{args.kernel}"
        base = revision_kernels(args.base, Path(folder) / "base", f"{prefix}_base", args.kernel)
        new = (revision_kernels(args.new, Path(folder) / "new", f"{prefix}_new", args.kernel) if args.new
               else own_build())
        if new is None:
            raise SystemExit(f"the working tree's {args.kernel} kernels could not be built")
        for shape, dtype_name, x in cases(args):
            base_calls, new_calls = kernel_calls(base, x), kernel_calls(new, x)
            difference = {mode: max_difference(base_calls[mode](), new_calls[mode]()) for mode in base_calls}
            for mode, base_ms, new_ms in side_by_side_ms(base_calls, new_calls, args):
                rows.append(f"| {shape} | {dtype_name} | {mode} | {base_ms:.2f} | {new_ms:.2f} | "
                            f"{new_ms / base_ms:.2f} | {difference[mode]:.1e} |")
    machine = machine_with_load(load_before)
    print(f"Machine: {machine_line(machine)}; {load_text(machine)}.")
    new_option = f" --new {args.new}" if args.new else ""
    kernel_option = f" --kernel {args.kernel}" if args.kernel != "mixer" else ""
    print(f"Command: `python scripts/ab_mixer_kernels.py{kernel_option} --base {args.base}{new_option} "
          f"{timing_options(args)}`\n")
    new_name = args.new or "working tree"
    print(f"| shape (B, T, E, N) | dtype | kernel | {args.base} ms | {new_name} ms | ratio | max rel. difference |")
    print("|---|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
