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

from vimtune.bench.runner import (
    LIVE_MEMORY_ENV,
    fastest,
    machine_description,
    machine_line,
    run_measurement,
    write_results,
)

METHODS = ["full", "linear", "bias", "vpt-deep", "lora", "adapter", "svp"]


def measure_methods(model: str, img_size: int, batch: int, methods: list[str], repeats: int, rounds: int,
                    infer_batch: int, infer_repeats: int, num_classes: int) -> list[dict[str, Any]]:
    """One row per method: train-step seconds and peak extra memory, inference seconds.

    The training steps are measured in ``rounds`` passes over all methods in turn (a fresh process
    each time), so that a slow drift of the machine hits every method alike; a row's ``train`` is
    its fastest round, ``train_rounds`` keeps them all.
    """
    base = {"model": model, "model_kwargs": {"img_size": img_size, "num_classes": num_classes}, "img_size": img_size}
    train = base | {"mode": "train", "batch": batch, "repeats": repeats, "warmup": 1}
    infer = base | {"mode": "infer", "batch": infer_batch, "repeats": infer_repeats, "warmup": 2}
    rows = {method: {"method": method or "backbone (no method)"} for method in [None, *methods]}
    for round_index in range(rounds):
        for method in methods:
            result = run_measurement(train | {"method": method})
            rows[method].setdefault("train_rounds", []).append(result)
            print(json.dumps({"round": round_index, "method": method, "train": result}), flush=True)
    for method, row in rows.items():
        if method is not None:
            row["train"] = fastest(row["train_rounds"])
            row["train_live_memory"] = run_measurement(train | {"method": method, "repeats": 1}, env=LIVE_MEMORY_ENV)
        row["infer"] = run_measurement(infer | {"method": method})
        print(json.dumps({k: v for k, v in row.items() if k != "train_rounds"}), flush=True)
    return list(rows.values())


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


def to_markdown(rows: list[dict[str, Any]], machine: dict[str, Any], command: str, batch: int,
                rounds: int = 1) -> str:
    """Step time and memory of each method relative to full fine-tuning; inference time relative to the backbone."""
    by_name = {r["method"]: r for r in rows}
    full = by_name.get("full", {})
    full_time = full.get("train", {}).get("seconds")
    full_rss = full.get("train", {}).get("peak_extra_bytes")
    full_live = full.get("train_live_memory", {}).get("peak_extra_bytes")
    backbone = rows[0]["infer"].get("seconds")
    lines = [
        f"Machine: {machine_line(machine)}. Command: `{command}`.",
        f"Training step = forward + backward + AdamW at batch {batch}, the fastest timed step of {rounds} round(s)",
        "over all methods in turn (a fresh process per method and round, so drift hits every method alike).",
        "Memory = peak RSS",
        "of a fresh process minus its RSS after a library warm-up, before the model was built (weights, gradients,",
        "optimizer state, activations): `live` in a process where glibc returns every freed block of 128 KiB or",
        "more to the OS (`MALLOC_MMAP_THRESHOLD_=131072`, so RSS follows the live tensors), `RSS` in the timed",
        "process, which keeps freed blocks for reuse as the vimtune command does (`vimtune.allocator`), so they",
        "count too. Inference = best of the timed passes of the fine-tuned model in eval mode.",
        "",
        "| method | step s | step vs full | live MiB | live vs full | RSS MiB | RSS vs full | inference s "
        "| inference vs backbone |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cells = ["-"] * 6
        train, live = row.get("train"), row.get("train_live_memory")
        if train is not None and "error" in train:
            cells[:2] = ["error", "-"]
        elif train is not None:
            cells[0], cells[1] = f"{train['seconds']:.2f}", _ratio(train["seconds"], full_time)
            cells[4], cells[5] = f"{train['peak_extra_bytes'] / 2**20:.0f}", _ratio(train["peak_extra_bytes"], full_rss)
        if live is not None and "error" not in live:
            cells[2], cells[3] = f"{live['peak_extra_bytes'] / 2**20:.0f}", _ratio(live["peak_extra_bytes"], full_live)
        infer = row["infer"]
        if "error" in infer:
            cells += ["error", "-"]
        else:
            cells += [f"{infer['seconds']:.3f}", _ratio(infer["seconds"], backbone)]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vimtune bench methods", description=__doc__)
    parser.add_argument("--model", default="vim_small_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--infer-batch", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps per method")
    parser.add_argument("--rounds", type=int, default=2,
                        help="passes over all methods for the training-step times (default 2)")
    parser.add_argument("--infer-repeats", type=int, default=5, help="timed inference passes per model")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/methods"),
                        help="output stem: writes STEM.<cpu>.md and .json (<cpu>: model and ISA)")
    args = parser.parse_args(argv)
    machine = machine_description()
    rows = measure_methods(args.model, args.img_size, args.batch, args.methods, args.repeats, args.rounds,
                           args.infer_batch, args.infer_repeats, args.num_classes)
    command = ("vimtune bench methods " + " ".join(argv or [])).strip()
    markdown = to_markdown(rows, machine, command, args.batch, args.rounds)
    write_results(args.out, markdown, machine, command, rows=rows)
    return 0
