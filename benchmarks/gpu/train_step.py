"""Training-step time and peak memory of a Vim with a fine-tuning method, per dtype, on one device.

Each (method, dtype) is one fresh process of :mod:`vimtune.bench.measure` (``mode=train``: forward, backward and
an AdamW step). Writes STEM.md and STEM.json. Used by ``benchmarks/gpu/run_all.sh``; for example::

    python benchmarks/gpu/train_step.py --device cuda --model vim_small_patch16_224 --batch 64 \\
        --methods svp full --dtypes float32 bfloat16 --out benchmarks/results/gpu/h200/train_step
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vimtune.bench.runner import machine_description, machine_line, run_measurement, write_results


def to_markdown(rows: list[dict[str, Any]], machine: dict[str, Any], command: str) -> str:
    """One row per (method, dtype): step time, images/s, peak memory."""
    gpu = next((r["gpu"] for r in rows if "gpu" in r), None)
    where = f"GPU: {gpu}" if gpu else "CPU"
    lines = [
        f"{where}. Machine: {machine_line(machine)}. Command: `{command}`.",
        "Step = forward + backward + AdamW step, best of the timed repeats; memory = peak allocated on the GPU "
        "(`torch.cuda.max_memory_allocated`) from before the model was built, or peak extra RSS on CPU.",
        "",
        "| method | dtype | batch | step ms | img/s | peak MiB | scan backend |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['dtype']} | {r['batch']} | error: {r['error'][:120]} | | | |")
            continue
        lines.append(f"| {r['method']} | {r['dtype']} | {r['batch']} | {r['seconds'] * 1e3:.1f} | "
                     f"{r['images_per_s']:.1f} | {r['peak_extra_bytes'] / 2**20:.0f} | {r.get('scan_backend', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="vim_small_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["svp"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True, help="output stem: writes STEM.md and STEM.json")
    args = parser.parse_args(argv)
    rows = []
    for method in args.methods:
        for dtype in args.dtypes:
            spec = {"model": args.model, "model_kwargs": {"img_size": args.img_size, "num_classes": args.num_classes},
                    "method": None if method == "none" else method, "mode": "train", "batch": args.batch,
                    "img_size": args.img_size, "dtype": dtype, "repeats": args.repeats, "warmup": 2,
                    "device": args.device}
            rows.append({"method": method, "dtype": dtype, "batch": args.batch, **run_measurement(spec, timeout_s=300)})
            print(rows[-1], flush=True)
    command = "python benchmarks/gpu/train_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_results(args.out, to_markdown(rows, machine_description(), command), machine_description(), command,
                  rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
