"""``vimtune bench methods``: training-step time and peak memory of each fine-tuning method.

For one backbone (default vim_small at 224 px, batch 32): one forward+backward+AdamW step per
method, each in a fresh subprocess (peak RSS), methods in one run; plus inference time of each
fine-tuned model next to the plain backbone (what the method adds at inference).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vimtune.bench.runner import machine_description, machine_line, run_measurement

METHODS = ["full", "linear", "bias", "vpt-deep", "lora", "adapter", "svp"]


def measure_methods(model: str, img_size: int, batch: int, methods: list[str], repeats: int,
                    infer_batch: int, num_classes: int) -> list[dict[str, Any]]:
    """One row per method: train-step seconds and peak extra memory, inference seconds."""
    base = {"model": model, "model_kwargs": {"img_size": img_size, "num_classes": num_classes},
            "img_size": img_size, "repeats": repeats, "warmup": 1}
    rows = []
    for method in [None, *methods]:
        row: dict[str, Any] = {"method": method or "backbone (no method)"}
        if method is not None:
            row["train"] = run_measurement(base | {"method": method, "mode": "train", "batch": batch})
        row["infer"] = run_measurement(base | {"method": method, "mode": "infer", "batch": infer_batch})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def to_markdown(rows: list[dict[str, Any]], machine: dict[str, Any], command: str, batch: int) -> str:
    """Table of step time / memory relative to full fine-tuning and inference time relative to the backbone."""
    by_name = {r["method"]: r for r in rows}
    full = by_name.get("full", {}).get("train", {})
    backbone = rows[0]["infer"]
    lines = [
        f"Machine: {machine_line(machine)}. Command: `{command}`.",
        f"Training step = forward + backward + AdamW at batch {batch}, best of the timed repeats; memory = peak RSS",
        "of a fresh process minus its RSS before the model was built.",
        "",
        "| method | step s | step vs full | peak MiB | memory vs full | inference s | inference vs backbone |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        train, infer = row.get("train"), row["infer"]
        if train is None:
            step = ratio = mem = mem_ratio = "-"
        elif "error" in train:
            step, ratio, mem, mem_ratio = "error", "-", "-", "-"
        else:
            step, mem = f"{train['seconds']:.2f}", f"{train['peak_extra_bytes'] / 2**20:.0f}"
            ok = full and "error" not in full
            ratio = f"{train['seconds'] / full['seconds']:.2f}x" if ok else "-"
            mem_ratio = f"{train['peak_extra_bytes'] / full['peak_extra_bytes']:.2f}x" if ok else "-"
        if "error" in infer or "error" in backbone:
            inf, inf_ratio = "error", "-"
        else:
            inf, inf_ratio = f"{infer['seconds']:.3f}", f"{infer['seconds'] / backbone['seconds']:.2f}x"
        lines.append(f"| {row['method']} | {step} | {ratio} | {mem} | {mem_ratio} | {inf} | {inf_ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vimtune bench methods", description=__doc__)
    parser.add_argument("--model", default="vim_small_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--infer-batch", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/methods"),
                        help="output stem: writes STEM.md and STEM.json")
    args = parser.parse_args(argv)
    machine = machine_description()
    rows = measure_methods(args.model, args.img_size, args.batch, args.methods, args.repeats, args.infer_batch,
                           args.num_classes)
    command = ("vimtune bench methods " + " ".join(argv or [])).strip()
    markdown = to_markdown(rows, machine, command, args.batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"machine": machine | {"bf16_matmul_isa": sorted(machine["bf16_matmul_isa"])}, "command": command,
         "rows": rows}, indent=1))
    print(markdown)
    return 0
