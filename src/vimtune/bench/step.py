"""``vimtune bench step``: the training step of Vim + SVP against a ViT fully fine-tuned, float32 and bf16.

One training step (forward, cross-entropy, backward, AdamW) at batch 32 and 224 px of each setting,
default ``vim_small_patch16_224`` with SVP and the plain ``deit_small_patch16_224`` with every parameter
trained (full fine-tuning; what issue #17's target compares), in float32 and under bfloat16 autocast;
``--mode infer`` times one inference pass instead (e.g. Vim-Ti against DeiT-Ti at batch 8).
Every measurement runs in a fresh process (:mod:`vimtune.bench.measure`: a warm-up step, then the
timed steps); ``--rounds`` passes take the settings in turn so that drift of the machine hits both
alike, and a row keeps its fastest round. Each row gives the wall time and the CPU time (user + system
of all the process's threads) of a step; ``--clock cpu`` takes the ratio from CPU time, which other work
on a shared machine disturbs less than wall time (CPU time also counts OpenMP threads spin-waiting).
``--breakdown`` profiles two more steps per measurement and splits the faster one into matmul, vimtune's kernels,
attention and the rest (:mod:`vimtune.bench.breakdown`), which shows what a ratio would be if the
kernels took no time at all: the part of the gap that no kernel work can close.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from vimtune.bench.breakdown import GROUPS
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


def measure_steps(settings: list[tuple[str, str | None]], dtypes: list[str], common: dict[str, Any], rounds: int,
                  clock: str) -> list[dict[str, Any]]:
    """One row per (dtype, model, method): the fastest round by ``clock`` (``seconds`` or ``cpu_seconds``).

    ``common``: the :mod:`vimtune.bench.measure` spec keys shared by every measurement (``mode``, ``batch``,
    ``img_size``, ``repeats``, ``threads``, ``breakdown``)."""
    rows = []
    for dtype in dtypes:
        results: dict[tuple[str, str | None], list[dict[str, Any]]] = {setting: [] for setting in settings}
        for round_index in range(rounds):
            for model, method in settings:
                spec = common | {"model": model, "model_kwargs": {"img_size": common["img_size"], "num_classes": 10},
                                 "method": method, "dtype": dtype, "warmup": 1}
                results[model, method].append(run_measurement(spec))
                print(json.dumps({"round": round_index, "dtype": dtype, "model": model, "method": method,
                                  "result": results[model, method][-1]}), flush=True)
        for (model, method), rounds_run in results.items():
            plain = "full (plain model)" if common["mode"] == "train" else "- (plain model)"
            rows.append({"dtype": dtype, "model": model, "method": method or plain,
                         "step": fastest(rounds_run, clock), "rounds": rounds_run})
    return rows


STEP_TEXT = {"train": "One training step (forward, cross-entropy, backward, AdamW)",
             "infer": "One inference pass (eval mode, `torch.inference_mode`)"}


def to_markdown(rows: list[dict[str, Any]], machine: dict[str, Any], command: str, clock: str, batch: int,
                img_size: int, mode: str = "train") -> str:
    """Wall and CPU seconds per step of each row; each row's step time over the last setting's of its dtype;
    with breakdowns, the profiled seconds per group and what the first row would take without the kernels."""
    field = CLOCKS[clock]
    profiled = any("breakdown" in r["step"] for r in rows)
    lines = [
        f"Machine: {machine_line(machine)}; {load_text(machine)}.",
        f"Command: `{command}`. {STEP_TEXT[mode]} at batch {batch}, "
        f"{img_size} px, fresh process per measurement, fastest round by {clock} time. `wall s` = best wall time "
        "of a step; `CPU s` = least CPU time of a step (all threads); `vs last` = this row's "
        f"{clock} time / the last row's of the same dtype."
        + (" Profiled columns: the faster of two more steps under `torch.profiler`, self time of its operators "
           "in seconds: `matmul` (matrix products, patch-embedding conv), `kernels` (vimtune's scan and conv kernels), "
           "`attention` (fused attention), `other` (the rest)." if profiled else ""),
        "",
        "| dtype | model | method | wall s | CPU s | vs last |" + (" profiled s | " + " | ".join(GROUPS) + " |"
                                                                 if profiled else ""),
        "|---|---|---|---:|---:|---:|" + "---:|" * (len(GROUPS) + 1) * profiled,
    ]
    notes = []
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        group = [r for r in rows if r["dtype"] == dtype]
        base = group[-1]["step"].get(field)
        for r in group:
            step = r["step"]
            if "error" in step:
                lines.append(f"| {dtype} | {r['model']} | {r['method']} | {step['error'][:80]} | - | - |"
                             + " - |" * (len(GROUPS) + 1) * profiled)
                continue
            ratio = f"{step[field] / base:.2f}x" if base else "-"
            cells = [f"{step['seconds']:.2f}", f"{step['cpu_seconds']:.2f}", ratio]
            if profiled:
                split = step.get("breakdown", {})
                cells += [f"{split[k]:.2f}" if k in split else "-" for k in ("total", *GROUPS)]
            lines.append(f"| {dtype} | {r['model']} | {r['method']} | " + " | ".join(cells) + " |")
        notes.append(_without_kernels(dtype, group[0], group[-1]))
    notes = [note for note in notes if note]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _without_kernels(dtype: str, first: dict[str, Any], last: dict[str, Any]) -> str:
    """One sentence: the first row's profiled step without vimtune's kernels, over the last row's profiled
    step ("" when either has no breakdown)."""
    split, base = first["step"].get("breakdown"), last["step"].get("breakdown")
    if first is last or not split or not base:
        return ""
    rest = split["total"] - split["kernels"]
    name = first["model"] if first["method"].endswith("(plain model)") else f"{first['model']} + {first['method']}"
    return (f"{dtype}: of {name}'s profiled step ({split['total']:.2f} s), vimtune's "
            f"kernels take {split['kernels']:.2f} s; without them it would take {rest:.2f} s, "
            f"**{rest / base['total']:.2f}x** {last['model']}'s profiled {base['total']:.2f} s: no kernel "
            "speed-up brings the ratio below that.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vimtune bench step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["vim_small_patch16_224:svp", "deit_small_patch16_224"],
                        help="MODEL:METHOD, or MODEL alone for full fine-tuning of the plain timm model; the ratio "
                        "column divides by the last one")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--mode", choices=list(STEP_TEXT), default="train",
                        help="train: forward, loss, backward, AdamW; infer: one inference pass")
    parser.add_argument("--breakdown", action="store_true",
                        help="profile two more steps per measurement: seconds in matmul, vimtune's kernels, "
                        "attention and the rest, and the ratio without the kernels")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="which time picks the fastest round and makes the ratio (cpu: on a shared machine)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output stem: writes STEM.<cpu>.md and .json (<cpu>: model and ISA); default "
                        "benchmarks/results/step, or benchmarks/results/step_infer with --mode infer")
    args = parser.parse_args(argv)
    settings = []
    for item in args.settings:
        model, sep, method = item.partition(":")
        if not model or (sep and not method):
            parser.error(f"--settings: {item!r} is not MODEL or MODEL:METHOD (e.g. vim_small_patch16_224:svp)")
        settings.append((model, method or None))
    load_before = os.getloadavg()[0]
    common = {"mode": args.mode, "batch": args.batch, "img_size": args.img_size, "repeats": args.repeats,
              "threads": args.threads, "breakdown": args.breakdown}
    rows = measure_steps(settings, args.dtypes, common, args.rounds, CLOCKS[args.clock])
    machine = machine_with_load(load_before)
    if args.threads:
        machine["threads"] = args.threads
    command = bench_command("step", argv)
    markdown = to_markdown(rows, machine, command, args.clock, args.batch, args.img_size, args.mode)
    out = args.out or Path("benchmarks/results/step" + ("_infer" if args.mode == "infer" else ""))
    write_results(out, markdown, machine, command, rows=rows, clock=args.clock)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
