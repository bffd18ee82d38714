"""``vimtune bench targets``: issue #17's CPU targets, met or missed, on every CPU with result files.

Reads the JSON files that ``vimtune bench suite`` writes (``benchmarks/results/STEM.<cpu>.json``) and
computes each target's ratio from them, one column per CPU model: nothing is typed in by hand, so the
table in the README and in ``docs/cpu-benchmarks.md`` (``python scripts/sync_readme.py``) changes exactly
when a committed result file does. A file counts only if its recorded command ran the target's setting
(image size, batch, mode, threads); a cell says so when it did not, and is ``-`` when that CPU has no such
file or the file has no row of that dtype.

The ratios, each measured side by side in one run of one command:

- scan rows (``scan_1thread``, shape (8, 384, 197, 16), one thread): the kernel's time over the exp floor
  of the same run, ``torch.exp2`` over as many values in cache. Files made before that floor existed only
  have ``torch.exp``, whose MKL code is several times slower on AMD CPUs than on Intel ones: their ratio is
  shown without a verdict;
- speed rows (inference passes): DeiT-Ti's time over Vim-Ti's, so higher is better;
- training rows: vim_small + SVP's step time over deit_small full fine-tuning's, so lower is better.

Times are the file's own clock: best wall time, or least CPU time for the files run with ``--clock cpu``
(the training steps). The ``oneDNN linears`` rows take the runs with both models' float32 linears on oneDNN.

    vimtune bench targets                          # the committed files
    vimtune bench targets --results /tmp/trial     # the files of a `vimtune bench suite --out-dir` run
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path("benchmarks/results")
SCAN_SHAPE = "tiny-224"
SCAN_KERNELS = {"mixer": "models' kernel", "cpu": "`selective_scan` kernel"}
CPU_TAG = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")

Reading = float | str | None
"""What a reader makes of a file: the ratio; a cell text saying why there is none (a failed row); or None
when the file has no row of the target's setting (the target's next file is then tried)."""


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The file's rows that are JSON objects."""
    rows = results.get("rows")
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def step_ratio(dtype: str, vim: tuple[str, str], deit: tuple[str, str], speed: bool,
               cpu_matmul: str | None = None) -> Callable[[dict[str, Any]], Reading]:
    """Reader of a ``vimtune bench step`` file: the (model, method) rows ``vim`` and ``deit`` of this dtype and
    ``cpu_matmul`` setting; DeiT's time / Vim's with ``speed`` (how many times faster Vim is), else Vim's / DeiT's."""

    def read(results: dict[str, Any]) -> Reading:
        key = "cpu_seconds" if results.get("clock") == "cpu" else "seconds"
        steps = {(row.get("model"), row.get("method")): row.get("step") for row in _rows(results)
                 if row.get("dtype") == dtype and row.get("cpu_matmul") == cpu_matmul}
        if vim not in steps or deit not in steps:
            return None
        times = []
        for name, step in ((vim[0], steps[vim]), (deit[0], steps[deit])):
            if not isinstance(step, dict) or "error" in step or not isinstance(step.get(key), int | float):
                return f"failed: no time for {name}"
            times.append(step[key])
        vim_time, deit_time = times
        return deit_time / vim_time if speed else vim_time / deit_time

    return read


def over_exp_floor(mode: str, backend: str) -> Callable[[dict[str, Any]], Reading]:
    """Reader of a ``vimtune bench scan`` file: a kernel's time / the exp floor of the same run, at
    :data:`SCAN_SHAPE` in ``mode`` (``forward`` or ``fwd+bwd``), against ``torch.exp2``; against ``torch.exp``
    (no ``torch.exp2`` floor in the file) it is a text without a verdict."""

    def read(results: dict[str, Any]) -> Reading:
        seconds = {row.get("backend"): row.get("seconds") for row in _rows(results)
                   if row.get("shape") == SCAN_SHAPE and row.get("mode") == mode}
        seconds = {name: s for name, s in seconds.items() if isinstance(s, int | float) and s > 0}
        if backend not in seconds:
            return None
        if "exp2 floor" in seconds:
            return seconds[backend] / seconds["exp2 floor"]
        if "exp floor" in seconds:
            return f"not checked: {seconds[backend] / seconds['exp floor']:.2f}x of `torch.exp` (no `torch.exp2`)"
        return "failed: no exp floor"

    return read


@dataclass(frozen=True)
class Target:
    """One row: ``read`` turns a result file's JSON into a :data:`Reading`; met when the ratio is at most
    ``bound`` (``at_most``) or at least it. ``stems`` are tried in order while a file is absent or has no
    row of the setting. A file counts only when its command, read by ``vimtune bench BENCHMARK``'s parser,
    has the option values of ``setting`` (e.g. ``{"mode": "infer", "batch": 8}``)."""

    label: str
    bound: float
    at_most: bool
    benchmark: str
    stems: tuple[str, ...]
    read: Callable[[dict[str, Any]], Reading]
    setting: dict[str, Any] = field(default_factory=dict)

    def goal(self) -> str:
        """``at most 2x`` or ``at least 2.5x``."""
        return f"{'at most' if self.at_most else 'at least'} {self.bound:g}x"

    def met(self, ratio: float) -> bool:
        return ratio <= self.bound if self.at_most else ratio >= self.bound

    def ran_setting(self, results: dict[str, Any]) -> bool:
        """Whether the file's command ran this target's setting."""
        command = results.get("command")
        prefix = ["vimtune", "bench", self.benchmark]
        words = shlex.split(command) if isinstance(command, str) else []
        if words[:3] != prefix:
            return False
        parser = importlib.import_module(f"vimtune.bench.{self.benchmark}").build_parser()
        try:
            options = vars(parser.parse_args(words[3:]))
        except SystemExit:  # options this version no longer knows
            return False
        return all(options.get(name) == value for name, value in self.setting.items())


INFER_TINY = {"vim": ("vim_tiny_patch16_224", "- (plain model)"), "deit": ("deit_tiny_patch16_224", "- (plain model)")}
TRAIN_SMALL = {"vim": ("vim_small_patch16_224", "svp"), "deit": ("deit_small_patch16_224", "full (plain model)")}
AT_1248 = {"mode": "infer", "batch": 1, "img_size": 1248}
AT_224 = {"mode": "infer", "batch": 8, "img_size": 224}
TRAINING = {"mode": "train", "batch": 32, "img_size": 224}
TARGETS = (
    *(Target(f"scan {word}, {name}: time / exp floor", bound, True, "scan", ("scan_1thread",),
             over_exp_floor(mode, backend), {"threads": 1})
      for mode, word, bound in (("forward", "forward", 2.0), ("fwd+bwd", "forward + backward", 6.0))
      for backend, name in SCAN_KERNELS.items()),
    Target("Vim-Ti / DeiT-Ti speed, batch 1, 1248 px, float32", 2.5, False, "step", ("step_infer_1248",),
           step_ratio("float32", **INFER_TINY, speed=True), AT_1248),
    Target("Vim-Ti / DeiT-Ti speed, batch 1, 1248 px, float32, oneDNN linears", 2.5, False, "step",
           ("step_infer_1248_linears",), step_ratio("float32", **INFER_TINY, speed=True, cpu_matmul="onednn"),
           AT_1248),
    Target("Vim-Ti / DeiT-Ti speed, batch 1, 1248 px, bfloat16 autocast", 1.2, False, "step", ("step_infer_1248",),
           step_ratio("bfloat16", **INFER_TINY, speed=True), AT_1248),
    Target("Vim-Ti / DeiT-Ti speed, batch 8, 224 px, float32", 0.8, False, "step", ("step_infer",),
           step_ratio("float32", **INFER_TINY, speed=True), AT_224),
    Target("Vim-Ti / DeiT-Ti speed, batch 8, 224 px, float32, oneDNN linears", 0.8, False, "step",
           ("step_infer_linears",), step_ratio("float32", **INFER_TINY, speed=True, cpu_matmul="onednn"), AT_224),
    Target("training step, batch 32: vim_small + SVP / deit_small full, float32", 1.6, True, "step",
           ("step_breakdown", "step"), step_ratio("float32", **TRAIN_SMALL, speed=False), TRAINING),
    Target("training step, batch 32: vim_small + SVP / deit_small full, float32, oneDNN linears", 1.6, True, "step",
           ("step_linears",), step_ratio("float32", **TRAIN_SMALL, speed=False, cpu_matmul="onednn"), TRAINING),
    Target("training step, batch 32: vim_small + SVP / deit_small full, bfloat16 autocast", 2.0, True, "step",
           ("step_breakdown", "step"), step_ratio("bfloat16", **TRAIN_SMALL, speed=False), TRAINING),
)
"""Issue #17's targets, in its order, each followed by its run with both models' linears on oneDNN."""


def result_files(results_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """CPU tag -> {stem -> parsed JSON} for the files ``STEM.<cpu>.json`` of the stems that :data:`TARGETS`
    read (a tag of lower-case words and digits joined by hyphens; other names, such as backup copies, are
    not result files). Raises ValueError naming a file that is not a JSON object."""
    stems = {stem for target in TARGETS for stem in target.stems}
    files: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(results_dir.glob("*.json")):
        stem, _, cpu = path.name[: -len(".json")].partition(".")
        if stem not in stems or not CPU_TAG.fullmatch(cpu):
            continue
        try:
            results = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"{path} is not a results file (JSON): {error}") from error
        if not isinstance(results, dict):
            raise ValueError(f"{path} is not a results file: expected a JSON object, found {type(results).__name__}")
        files.setdefault(cpu, {})[stem] = results
    return files


def cell(target: Target, files: dict[str, dict[str, Any]]) -> str:
    """``**met**: 1.12x``, ``missed: 2.19x``, a text saying why there is no verdict, or ``-``, for one CPU's
    files; a file other than the target's first is named."""
    for stem in target.stems:
        if stem not in files:
            continue
        source = f" (`{stem}`)" if stem != target.stems[0] else ""
        if not target.ran_setting(files[stem]):
            return f"`{stem}` ran another setting"
        reading = target.read(files[stem])
        if isinstance(reading, str):
            return reading + source
        if reading is not None:
            return f"{'**met**' if target.met(reading) else 'missed'}: {reading:.2f}x{source}"
    return "-"


def column_name(files: dict[str, dict[str, Any]], cpu: str) -> str:
    """The CPU as its result files describe it: model name, family / model numbers, widest ISA."""
    machine = next(iter(files.values())).get("machine")
    machine = machine if isinstance(machine, dict) else {}
    numbers = re.match(r"cpu family (\d+) model (\d+)", str(machine.get("cpu_id") or ""))
    isa = machine.get("isa")
    widest = isa[-1] if isinstance(isa, list) and isa else cpu.rsplit("-", 1)[-1]
    details = ([f"family {numbers[1]} model {numbers[2]}"] if numbers else []) + [str(widest)]
    return f"{machine.get('cpu') or cpu} ({', '.join(details)})"


def revisions(files: dict[str, dict[str, Any]]) -> str:
    """The vimtune commits the files were made with (``source`` in the JSON), or that they were not recorded."""
    commits = []
    for results in files.values():
        source = results.get("source")
        if isinstance(source, dict) and isinstance(source.get("commit"), str):
            commits.append(source["commit"][:7] + (" + changes" if source.get("src_modified") else ""))
    unrecorded = len(files) - len(commits)
    parts = sorted(set(commits)) + ([f"not recorded in {unrecorded} of {len(files)} files"] if unrecorded else [])
    return ", ".join(parts)


def targets_markdown(results_dir: Path = RESULTS) -> str:
    """The targets table: one row per target, one column per CPU with result files (in tag order)."""
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
