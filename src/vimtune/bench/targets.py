"""``vimtune bench targets``: issue #17's CPU targets, met or missed, on every CPU with result files.

Reads the JSON files that ``vimtune bench suite`` writes (``benchmarks/results/STEM.<cpu>.json``) and
computes each target's ratio from them, one column per CPU model: nothing is typed in by hand, so the
table in the README and in ``docs/cpu-benchmarks.md`` (``python scripts/sync_readme.py``) changes exactly
when a committed result file does. A cell is ``-`` when that CPU has no run of the file, or the file has
no row of that dtype (or only rows that hold a failed worker's ``error``).

The ratios, each measured side by side in one run of one command:

- scan rows (``scan_1thread``, shape (8, 384, 197, 16), one thread): the kernel's time over the exp floor
  of the same run, ``torch.exp2`` over as many values in cache; files made before that floor existed only
  have ``torch.exp``, whose MKL code is several times slower on AMD CPUs, and say so in the cell;
- speed rows (inference passes): DeiT-Ti's time over Vim-Ti's, so higher is better;
- training rows: vim_small + SVP's step time over deit_small full fine-tuning's, so lower is better.

Times are the file's own clock: best wall time, or least CPU time for the files run with ``--clock cpu``
(the training steps). ``same linears`` rows take the runs with both models' float32 linears on oneDNN.

    vimtune bench targets                          # the committed files
    vimtune bench targets --results /tmp/trial     # the files of a `vimtune bench suite --out-dir` run
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path("benchmarks/results")
SCAN_SHAPE = "tiny-224"
SCAN_KERNELS = {"mixer": "models' kernel", "cpu": "`selective_scan` kernel"}


def _time_rows(results: dict[str, Any], dtype: str, cpu_matmul: str | None) -> dict[str, float]:
    """Model name prefix (``vim``, ``deit``) -> step time, over the rows of a ``vimtune bench step`` file with
    this dtype and ``cpu_matmul`` setting whose step finished (the file's clock: wall or CPU seconds)."""
    key = "cpu_seconds" if results.get("clock") == "cpu" else "seconds"
    times = {}
    for row in results.get("rows", []):
        step = row.get("step", {})
        if row.get("dtype") == dtype and row.get("cpu_matmul") == cpu_matmul and "error" not in step:
            times[row["model"].split("_")[0]] = step[key]
    return times


def deit_over_vim(dtype: str, cpu_matmul: str | None = None) -> Callable[[dict[str, Any]], tuple[float, str] | None]:
    """Reader of a speed ratio: DeiT's time / Vim's (how many times faster Vim is)."""

    def read(results: dict[str, Any]) -> tuple[float, str] | None:
        times = _time_rows(results, dtype, cpu_matmul)
        return (times["deit"] / times["vim"], "") if {"vim", "deit"} <= times.keys() else None

    return read


def vim_over_deit(dtype: str, cpu_matmul: str | None = None) -> Callable[[dict[str, Any]], tuple[float, str] | None]:
    """Reader of a time ratio: Vim's time / DeiT's."""

    def read(results: dict[str, Any]) -> tuple[float, str] | None:
        times = _time_rows(results, dtype, cpu_matmul)
        return (times["vim"] / times["deit"], "") if {"vim", "deit"} <= times.keys() else None

    return read


def over_exp_floor(mode: str, backend: str) -> Callable[[dict[str, Any]], tuple[float, str] | None]:
    """Reader of a scan kernel's time / the exp floor of the same ``vimtune bench scan`` run, at
    :data:`SCAN_SHAPE` in ``mode`` (``forward`` or ``fwd+bwd``): ``torch.exp2``'s floor, else ``torch.exp``'s
    with a note that says so."""

    def read(results: dict[str, Any]) -> tuple[float, str] | None:
        seconds = {row["backend"]: row["seconds"] for row in results.get("rows", [])
                   if row.get("shape") == SCAN_SHAPE and row.get("mode") == mode and row.get("seconds")}
        floor = "exp2 floor" if "exp2 floor" in seconds else "exp floor"
        if backend not in seconds or floor not in seconds:
            return None
        note = "" if floor == "exp2 floor" else ", against `torch.exp` only"
        return seconds[backend] / seconds[floor], note

    return read


@dataclass(frozen=True)
class Target:
    """One row: ``read`` turns a result file's JSON into (ratio, note); met when the ratio is at most
    ``bound`` (``at_most``) or at least it. ``stems`` are tried in order; the first that gives a ratio counts."""

    label: str
    bound: float
    at_most: bool
    stems: tuple[str, ...]
    read: Callable[[dict[str, Any]], tuple[float, str] | None]

    def goal(self) -> str:
        """``at most 2x`` or ``at least 2.5x``."""
        return f"{'at most' if self.at_most else 'at least'} {self.bound:g}x"

    def met(self, ratio: float) -> bool:
        return ratio <= self.bound if self.at_most else ratio >= self.bound


TARGETS = (
    *(Target(f"scan {word}, {name}: time / exp floor", bound, True,
             ("scan_1thread",), over_exp_floor(mode, backend))
      for mode, word, bound in (("forward", "forward", 2.0), ("fwd+bwd", "forward + backward", 6.0))
      for backend, name in SCAN_KERNELS.items()),
    Target("Vim-Ti / DeiT-Ti speed, batch 1, 1248 px, float32", 2.5, False, ("step_infer_1248",),
           deit_over_vim("float32")),
    Target("same, both models' linears on oneDNN", 2.5, False, ("step_infer_1248_linears",),
           deit_over_vim("float32", "onednn")),
    Target("same, bfloat16 autocast", 1.2, False, ("step_infer_1248",), deit_over_vim("bfloat16")),
    Target("Vim-Ti / DeiT-Ti speed, batch 8, 224 px, float32", 0.8, False, ("step_infer",),
           deit_over_vim("float32")),
    Target("same, both models' linears on oneDNN", 0.8, False, ("step_infer_linears",),
           deit_over_vim("float32", "onednn")),
    Target("training step, batch 32, 224 px: vim_small + SVP / deit_small full, float32", 1.6, True,
           ("step_breakdown", "step"), vim_over_deit("float32")),
    Target("same, both models' linears on oneDNN", 1.6, True, ("step_linears",), vim_over_deit("float32", "onednn")),
    Target("same, bfloat16 autocast", 2.0, True, ("step_breakdown", "step"), vim_over_deit("bfloat16")),
)
"""Issue #17's targets, in its order; ``same, ...`` rows are the row above with another setting."""


def result_files(results_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """CPU tag -> {stem -> parsed JSON} for the files ``STEM.<cpu>.json`` of the stems that :data:`TARGETS` read."""
    stems = {stem for target in TARGETS for stem in target.stems}
    files: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(results_dir.glob("*.json")):
        stem, _, cpu = path.name[: -len(".json")].partition(".")
        if stem in stems and cpu:
            try:
                files.setdefault(cpu, {})[stem] = json.loads(path.read_text())
            except ValueError as error:
                raise ValueError(f"{path} is not a results file (JSON): {error}") from error
    return files


def cell(target: Target, files: dict[str, dict[str, Any]]) -> str:
    """``**met**: 1.12x``, ``missed: 2.19x, against `torch.exp` only`` or ``-`` for one CPU's files; the
    file is named when it is not the target's first."""
    for stem in target.stems:
        reading = target.read(files[stem]) if stem in files else None
        if reading is not None:
            ratio, note = reading
            verdict = "**met**" if target.met(ratio) else "missed"
            source = f" (`{stem}`)" if stem != target.stems[0] else ""
            return f"{verdict}: {ratio:.2f}x{note}{source}"
    return "-"


def column_name(files: dict[str, dict[str, Any]], cpu: str) -> str:
    """The CPU as its result files describe it: model name, family / model numbers, widest ISA."""
    machine = next(iter(files.values())).get("machine", {})
    cpu_id = machine.get("cpu_id", "").replace("cpu family ", "family ")
    cpu_id = cpu_id.split(" stepping")[0]
    isa = (machine.get("isa") or [cpu.rsplit("-", 1)[-1]])[-1]
    return f"{machine.get('cpu', cpu)} ({', '.join(part for part in (cpu_id, isa) if part)})"


def revisions(files: dict[str, dict[str, Any]]) -> str:
    """The vimtune commits the files were made with (``source`` in the JSON), or that they were not recorded."""
    commits = []
    for results in files.values():
        source = results.get("source") or {}
        if source.get("commit"):
            commits.append(source["commit"][:7] + (" + changes" if source.get("src_modified") else ""))
    unrecorded = len(files) - len(commits)
    parts = sorted(set(commits)) + ([f"not recorded in {unrecorded} of {len(files)} files"] if unrecorded else [])
    return ", ".join(parts)


def targets_markdown(results_dir: Path = RESULTS) -> str:
    """The targets table: one row per target, one column per CPU with result files (in name order)."""
    by_cpu = result_files(results_dir)
    if not by_cpu:
        return f"No result files of the targets' benchmarks under {results_dir}: run `vimtune bench suite`."
    cpus = sorted(by_cpu)
    lines = ["| target (result file) | goal | " + " | ".join(column_name(by_cpu[cpu], cpu) for cpu in cpus) + " |",
             "|---|---|" + "---|" * len(cpus)]
    for target in TARGETS:
        cells = " | ".join(cell(target, by_cpu[cpu]) for cpu in cpus)
        lines.append(f"| {target.label} (`{target.stems[0]}`) | {target.goal()} | {cells} |")
    lines.append("| vimtune commit of the runs | | " + " | ".join(revisions(by_cpu[cpu]) for cpu in cpus) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``vimtune bench targets``."""
    parser = argparse.ArgumentParser(prog="vimtune bench targets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help=f"folder of the result files (default {RESULTS}, the committed ones)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(targets_markdown(args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
