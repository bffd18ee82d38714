"""Profile the training step of one git revision against another's (or the working tree's), operator by operator.

Checks both revisions out (``git worktree``, removed afterwards) and runs, ``--rounds`` times and in turn, a
fresh process per revision and dtype that imports that revision's vimtune (its own C++ kernel build), builds
vim_small + SVP, takes one warm-up training step (batch 32, 224 px, AdamW, as ``vimtune bench step``) and
profiles three more (``torch.profiler``, CPU). Each revision keeps its least profiled total over all rounds;
the table gives that step's self time per operator (the operators that take at least ``--min-s`` in either).
Operators' self times are steadier than whole steps on a shared machine: a change that removes operators
shows there even when the step time moves less than its noise. Example (issue #17's gradient buffer):

    python scripts/ab_step_profile.py --base ec9af41 --new 9a9c122 --dtypes float32 bfloat16 --rounds 3
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL, METHOD, BATCH, IMG_SIZE = "vim_small_patch16_224", "svp", 32, 224


def profile_worker(dtype: str) -> None:
    """In this process (the revision's vimtune on the path): print the per-operator self seconds of the least
    total of three profiled training steps, as JSON."""
    import torch

    from vimtune.bench.measure import _step_fn, build, warm_up_libraries

    warm_up_libraries()
    spec = {"model": MODEL, "model_kwargs": {"img_size": IMG_SIZE, "num_classes": 10}, "method": METHOD,
            "dtype": dtype, "mode": "train"}
    torch.manual_seed(0)
    step = _step_fn(build(spec), spec, torch.randn(BATCH, 3, IMG_SIZE, IMG_SIZE))
    step()  # warm-up
    best: dict[str, float] | None = None
    for _ in range(3):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
        ops: dict[str, float] = collections.defaultdict(float)
        for event in prof.key_averages():
            ops[event.key] += event.self_cpu_time_total / 1e6
        if best is None or sum(ops.values()) < sum(best.values()):
            best = dict(ops)
    print(json.dumps(best))


def run_profile(tree: Path, extensions: Path, dtype: str) -> dict[str, float]:
    """Per-operator self seconds of ``tree``'s training step, from a fresh worker process."""
    env = os.environ | {"PYTHONPATH": str(tree / "src"), "TORCH_EXTENSIONS_DIR": str(extensions)}
    done = subprocess.run([sys.executable, __file__, "--worker", dtype], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="git revision profiled as the baseline")
    parser.add_argument("--new", help="git revision compared with it (default: the working tree)")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-s", type=float, default=0.05, help="operators below this in both are left out")
    parser.add_argument("--worker", choices=["float32", "bfloat16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        profile_worker(args.worker)
        return 0
    if not args.base:
        parser.error("--base is required")
    from vimtune.bench.runner import load_text, machine_line, machine_with_load

    load_before = os.getloadavg()[0]
    root = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                               check=True).stdout.strip())
    with tempfile.TemporaryDirectory() as folder:
        trees = {"base": Path(folder) / "base", "new": Path(folder) / "new" if args.new else root}
        for side, rev in (("base", args.base), ("new", args.new)):
            if rev:
                subprocess.run(["git", "worktree", "add", "--detach", str(trees[side]), rev], cwd=root, check=True,
                               capture_output=True)
        try:
            best: dict[tuple[str, str], dict[str, float]] = {}
            for _ in range(args.rounds):
                for dtype in args.dtypes:
                    for side, tree in trees.items():
                        ops = run_profile(tree, Path(folder) / f"extensions_{side}", dtype)
                        if (side, dtype) not in best or sum(ops.values()) < sum(best[side, dtype].values()):
                            best[side, dtype] = ops
        finally:
            for side, rev in (("base", args.base), ("new", args.new)):
                if rev:
                    subprocess.run(["git", "worktree", "remove", "--force", str(trees[side])], cwd=root, check=False)
    machine = machine_with_load(load_before)
    print(f"Machine: {machine_line(machine)}; {load_text(machine)}.")
    new_option = f" --new {args.new}" if args.new else ""
    print(f"Command: `python scripts/ab_step_profile.py --base {args.base}{new_option} --dtypes "
          f"{' '.join(args.dtypes)} --rounds {args.rounds} --min-s {args.min_s:g}`. {MODEL} + {METHOD}, batch {BATCH}, "
          f"{IMG_SIZE} px, one training step; self seconds per operator of the least profiled total of "
          f"{args.rounds} x 3 steps per revision.\n")
    new_name = args.new or "working tree"
    print(f"| dtype | operator | {args.base} s | {new_name} s | difference s |")
    print("|---|---|---:|---:|---:|")
    for dtype in args.dtypes:
        base, new = best["base", dtype], best["new", dtype]
        names = sorted({n for n in base | new if max(base.get(n, 0.0), new.get(n, 0.0)) >= args.min_s},
                       key=lambda n: -max(base.get(n, 0.0), new.get(n, 0.0)))
        for name in names:
            b, n = base.get(name, 0.0), new.get(name, 0.0)
            print(f"| {dtype} | `{name}` | {b:.3f} | {n:.3f} | {n - b:+.3f} |")
        b, n = sum(base.values()), sum(new.values())
        print(f"| {dtype} | **total** | {b:.2f} | {n:.2f} | {n - b:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
