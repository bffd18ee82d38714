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
``--breakdown`` profiles two more steps per measurement and splits the faster one into matmul, vimtune's scan
and conv kernels, attention and the rest (:mod:`vimtune.bench.breakdown`), which shows what a ratio would be
if those kernels took no time at all: the part of the gap that no kernel work can close.
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
from vimtune.ops.cpu_linear import CHOICES as CPU_MATMUL_CHOICES

DTYPES = ("float32", "bfloat16")
CLOCKS = {"wall": "seconds", "cpu": "cpu_seconds"}  # --clock -> the measurement's field


def measure_steps(settings: list[tuple[str, str | None]], dtypes: list[str], common: dict[str, Any], rounds: int,
                  clock: str, cpu_matmuls: list[str | None] | None = None) -> list[dict[str, Any]]:
    """One row per (dtype, CPU matmul choice, model, method): the fastest round by ``clock`` (``seconds`` or
    ``cpu_seconds``).

    ``common``: the :mod:`vimtune.bench.measure` spec keys shared by every measurement (``mode``, ``batch``,
    ``img_size``, ``repeats``, ``threads``, ``breakdown``). ``cpu_matmuls``: values of the spec key
    ``cpu_matmul`` to run every setting under (default ``[None]``: as the environment says)."""
    rows = []
    matmuls = cpu_matmuls or [None]
    for dtype in dtypes:
        results: dict[tuple[str | None, str, str | None], list[dict[str, Any]]] = {
            (cpu_matmul, *setting): [] for cpu_matmul in matmuls for setting in settings}
        for round_index in range(rounds):  # the choices and settings in turn, so drift hits them alike
            for cpu_matmul, model, method in results:
                spec = common | {"model": model, "model_kwargs": {"img_size": common["img_size"], "num_classes": 10},
                                 "method": method, "dtype": dtype, "warmup": 1, "cpu_matmul": cpu_matmul}
                results[cpu_matmul, model, method].append(run_measurement(spec))
                print(json.dumps({"round": round_index, "dtype": dtype, "cpu_matmul": cpu_matmul, "model": model,
                                  "method": method, "result": results[cpu_matmul, model, method][-1]}), flush=True)
        for (cpu_matmul, model, method), rounds_run in results.items():
            plain = "full (plain model)" if common["mode"] == "train" else "- (plain model)"
            rows.append({"dtype": dtype, "cpu_matmul": cpu_matmul, "model": model, "method": method or plain,
                         "step": fastest(rounds_run, clock), "rounds": rounds_run})
    return rows


STEP_TEXT = {"train": "One training step (forward, cross-entropy, backward, AdamW)",
             "infer": "One inference pass (eval mode, `torch.inference_mode`)"}


def to_markdown(rows: list[dict[str, Any]], machine: dict[str, Any], command: str, clock: str, batch: int,
                img_size: int, mode: str = "train") -> str:
    """Wall and CPU seconds per step of each row; each row's step time over the last setting's of its dtype
    (and CPU matmul choice); with breakdowns, the profiled seconds per group and what the first row would
    take without the kernels."""
    field = CLOCKS[clock]
    profiled = any("breakdown" in r["step"] for r in rows)
    chosen = any(r.get("cpu_matmul") for r in rows)
    lines = [
        f"Machine: {machine_line(machine)}; {load_text(machine)}.",
        f"Command: `{command}`. {STEP_TEXT[mode]} at batch {batch}, "
        f"{img_size} px, fresh process per measurement, fastest round by {clock} time. `wall s` = best wall time "
        "of a step; `CPU s` = least CPU time of a step (all threads); `vs last` = this row's "
        f"{clock} time / the last row's of the same dtype{' and linears' if chosen else ''}."
        + (" `torch linears` / `onednn linears`: every float32 linear of every model (vimtune's and timm's "
           "`nn.Linear`) computed by torch's default (MKL) or by oneDNN (`--cpu-matmul`; "
           "`vimtune.ops.cpu_linear`)." if chosen else "")
        + (" Profiled columns: the faster of two more steps under `torch.profiler`, self time of its operators "
           "in seconds: `matmul` (matrix products, oneDNN's inner product, patch-embedding conv), "
           "`kernels` (vimtune's scan and conv kernels), "
           "`attention` (fused attention), `other` (the rest)." if profiled else ""),
        "",
        "| dtype | model | method | wall s | CPU s | vs last |" + (" profiled s | " + " | ".join(GROUPS) + " |"
                                                                 if profiled else ""),
        "|---|---|---|---:|---:|---:|" + "---:|" * (len(GROUPS) + 1) * profiled,
    ]
    notes = []
    for key in dict.fromkeys((r["dtype"], r.get("cpu_matmul")) for r in rows):
        group = [r for r in rows if (r["dtype"], r.get("cpu_matmul")) == key]
        dtype = key[0] if key[1] is None else f"{key[0]}, {key[1]} linears"
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
    """One sentence: the first row's profiled step without vimtune's scan and conv kernels, over the last row's
    profiled step ("" when either has no breakdown)."""
    split, base = first["step"].get("breakdown"), last["step"].get("breakdown")
    if first is last or not split or not base:
        return ""
    rest = split["total"] - split["kernels"]
    name = first["model"] if first["method"].endswith("(plain model)") else f"{first['model']} + {first['method']}"
    return (f"{dtype}: of {name}'s profiled step ({split['total']:.2f} s), vimtune's scan and conv "
            f"kernels take {split['kernels']:.2f} s; without them it would take {rest:.2f} s, "
            f"**{rest / base['total']:.2f}x** {last['model']}'s profiled {base['total']:.2f} s: no speed-up "
            "of those kernels brings the ratio below that.")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``vimtune bench step``."""
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
    parser.add_argument("--cpu-matmul", nargs="+", default=None, choices=CPU_MATMUL_CHOICES,
                        help="run every setting with its float32 linears (vimtune's and a timm model's) through "
                        "each of these (VIMTUNE_CPU_MATMUL; default: as the environment says, timm models untouched)")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="which time picks the fastest round and makes the ratio (cpu: on a shared machine)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output stem: writes STEM.<cpu>.md and .json (<cpu>: model and ISA); default "
                        "benchmarks/results/step, or benchmarks/results/step_infer with --mode infer")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
    rows = measure_steps(settings, args.dtypes, common, args.rounds, CLOCKS[args.clock], args.cpu_matmul)
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
