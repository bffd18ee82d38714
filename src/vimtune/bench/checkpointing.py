"""``vimtune bench checkpointing``: memory of a training step with and without gradient checkpointing.

Each setting runs one full fine-tuning step (forward, backward, AdamW) in a fresh process with glibc
returning freed blocks to the OS, so that the process's peak RSS follows the live tensors; the table
gives that peak above the process's RSS before the model was built (weights, gradients, optimizer
state and activations). With checkpointing each block keeps only its input: its norm and mixer
run again in the backward pass. Writes a markdown table and JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vimtune.bench.runner import LIVE_MEMORY_ENV, machine_description, machine_line, run_measurement, write_results


def measure_pair(model: str, img_size: int, batch: int, threads: int | None) -> list[dict[str, Any]]:
    """One training step of ``model`` without, then with, gradient checkpointing; one row each."""
    rows = []
    for checkpointing in (False, True):
        spec = {"model": model, "model_kwargs": {"img_size": img_size, "num_classes": 10}, "mode": "train",
                "batch": batch, "img_size": img_size, "repeats": 1, "warmup": 0, "threads": threads,
                "grad_checkpointing": checkpointing}
        rows.append({"grad_checkpointing": checkpointing, **run_measurement(spec, env=LIVE_MEMORY_ENV)})
    return rows


def parameter_state_bytes(model: str, img_size: int) -> int:
    """Bytes of the float32 weights, gradients and two AdamW moments of ``model`` (4 x the parameters)."""
    import timm
    import torch

    import vimtune.models  # noqa: F401 - registers the Vim configs

    with torch.device("meta"):
        built = timm.create_model(model, img_size=img_size, num_classes=10)
    return 4 * 4 * sum(p.numel() for p in built.parameters())


def to_markdown(rows: list[dict[str, Any]], model: str, img_size: int, batch: int, state_bytes: int,
                machine: dict[str, Any], command: str) -> str:
    """The two rows, the activations (peak minus the parameter-sized state) and the ratios."""
    mib = 2**20
    lines = [
        f"Machine: {machine_line(machine)}. Command: `{command}`.",
        f"One full fine-tuning step (forward, backward, AdamW) of `{model}` at {img_size} px, batch {batch}, "
        "float32, in a fresh process per row; peak = peak RSS above the RSS before the model was built; "
        f"activations = peak minus the weights, gradients and AdamW moments ({state_bytes / mib:,.0f} MiB, "
        "4 x the float32 parameters, computed).",
        "",
        "| gradient checkpointing | peak MiB | activations MiB | step s |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        name = "on" if row["grad_checkpointing"] else "off"
        if "error" in row:
            lines.append(f"| {name} | {row['error'][:80]} | - | - |")
        else:
            lines.append(f"| {name} | {row['peak_extra_bytes'] / mib:,.0f} | "
                         f"{(row['peak_extra_bytes'] - state_bytes) / mib:,.0f} | {row['seconds']:.2f} |")
    if all("error" not in row for row in rows):
        off, on = rows
        activations = (on["peak_extra_bytes"] - state_bytes) / (off["peak_extra_bytes"] - state_bytes)
        lines += ["", f"Checkpointing: {on['peak_extra_bytes'] / off['peak_extra_bytes']:.2f}x the peak, "
                      f"{activations:.2f}x the activations, {on['seconds'] / off['seconds']:.2f}x the step time "
                      "(one step each, side by side)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vimtune bench checkpointing", description=__doc__)
    parser.add_argument("--model", default="vim_small_patch16_224")
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/checkpointing"),
                        help="output stem: writes STEM.md and STEM.json")
    args = parser.parse_args(argv)
    machine = machine_description()
    rows = measure_pair(args.model, args.img_size, args.batch, args.threads)
    state_bytes = parameter_state_bytes(args.model, args.img_size)
    command = ("vimtune bench checkpointing " + " ".join(argv or [])).strip()
    markdown = to_markdown(rows, args.model, args.img_size, args.batch, state_bytes, machine, command)
    write_results(args.out, markdown, machine, command, rows=rows, parameter_state_bytes=state_bytes)
    return 0
