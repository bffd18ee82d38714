"""docs/backends.md's table of float32 times with every model's linear layers on MKL and on oneDNN.

It is computed from one CPU's ``*_linears`` result files of ``vimtune bench suite`` (``vimtune bench step
--cpu-matmul torch onednn``, which times each model both ways in one run): inference as wall seconds, the
training step in the clock the file was timed with (CPU seconds in the suite).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vimtune.bench.targets import INFER_TINY, TRAIN_SMALL, _rows, column_name

LINEAR_RUNS = (  # (result file stem, row label, (model, method))
    ("step_infer_linears", "Vim-Ti inference, 224 px, batch 8", INFER_TINY["vim"]),
    ("step_infer_linears", "DeiT-Ti, same", INFER_TINY["deit"]),
    ("step_infer_1248_linears", "Vim-Ti inference, 1248 px, batch 1", INFER_TINY["vim"]),
    ("step_infer_1248_linears", "DeiT-Ti, same", INFER_TINY["deit"]),
    ("step_linears", "vim_small + SVP training step, batch 32", TRAIN_SMALL["vim"]),
    ("step_linears", "deit_small full fine-tuning step, same", TRAIN_SMALL["deit"]),
)
"""The table's rows, in order."""


def _results(path: Path) -> dict[str, Any]:
    """The parsed result file; ValueError naming it when it is missing or not a JSON object."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"{path}: no result file to read ({error}); run `vimtune bench suite`") from error
    try:
        results = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{path} is not a results file (JSON): {error}") from error
    if not isinstance(results, dict):
        raise ValueError(f"{path} is not a results file: expected a JSON object")
    return results


def linear_times(results: dict[str, Any], model: str, method: str) -> tuple[float, float, str]:
    """(time with torch's linears, time with oneDNN's, the time's unit) of one float32 (model, method) in a
    ``--cpu-matmul torch onednn`` file (rows that recorded an error do not count); ValueError unless each has
    exactly one positive time."""
    clock = "CPU s" if results.get("clock") == "cpu" else "s"
    key = "cpu_seconds" if clock == "CPU s" else "seconds"
    times: dict[str, list[float]] = {}
    for row in _rows(results):
        step = row.get("step")
        if (row.get("dtype"), row.get("model"), row.get("method")) == ("float32", model, method) and \
                isinstance(step, dict) and "error" not in step and isinstance(step.get(key), int | float):
            times.setdefault(str(row.get("cpu_matmul")), []).append(float(step[key]))
    if any(len(times.get(matmul, ())) != 1 or times[matmul][0] <= 0 for matmul in ("torch", "onednn")):
        raise ValueError(f"expected one positive float32 time of {model} ({method}) with torch linears and one "
                         f"with onednn linears, found {times}")
    return times["torch"][0], times["onednn"][0], clock




def _threads(files: dict[str, dict[str, Any]]) -> str:
    """``", 2 threads"`` when every timed step of the files ran on that many threads, else nothing."""
    counts = {row["step"].get("threads") for results in files.values() for row in _rows(results)
              if isinstance(row.get("step"), dict)}
    return f", {counts.pop()} threads" if len(counts) == 1 and isinstance(next(iter(counts)), int) else ""


def linears_markdown(results_dir: Path, cpu: str) -> str:
    """The table for the CPU tagged ``cpu`` (the part of the result files' names after the stem)."""
    files = {stem: _results(results_dir / f"{stem}.{cpu}.json") for stem, _, _ in LINEAR_RUNS}
    lines = [f"| {column_name(files, cpu)}{_threads(files)}, float32 | torch linears (MKL) | oneDNN linears | "
             "speed-up |", "|---|---:|---:|---:|"]
    for stem, label, (model, method) in LINEAR_RUNS:
        try:
            torch_time, onednn_time, unit = linear_times(files[stem], model, method)
        except ValueError as error:
            raise ValueError(f"{results_dir / f'{stem}.{cpu}.json'}: {error}") from error
        decimals = 3 if unit == "s" else 2  # inference passes: below a second or a few; training steps: 5-15 s
        lines.append(f"| {label} ({unit}) | {torch_time:.{decimals}f} | {onednn_time:.{decimals}f} | "
                     f"{torch_time / onednn_time:.2f}x |")
    return "\n".join(lines)
