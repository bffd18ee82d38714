"""``vimtune bench suite``: the CPU benchmarks behind issue #17's targets, one after another.

Runs the commands whose result files the targets table of ``docs/cpu-benchmarks.md`` cites, with the
kernels' own files beside them (the scan and conv kernels at one thread, the training step, inference at
224 and 1248 px, the resolution sweep, and the float32 runs with both models' linears on each library),
each in a fresh ``vimtune bench`` process, in the order of :data:`SUITE`. A command that fails does not
stop the others. A command counts as failed when it exits with an error, writes no results file, or
writes one with rows that hold a measurement's ``error`` (a worker process that failed: the benchmark
itself still exits 0, and its file replaces the previous one); the summary at the end says which, and
the exit status is then 1. At the end it prints the targets table of ``vimtune bench targets`` for the
result files of the folder it wrote to.

Every command writes ``STEM.<cpu>.md`` and ``.json``: on a CPU model with no committed results this
adds its files beside the others, on a known one it replaces that machine's files (``--out-dir DIR``
writes them under DIR instead, leaving the committed ones alone). Run it with nothing else on the
machine: every table records the load average, and other work slows some rows more than others.

    vimtune bench suite --list                 # the commands, nothing run
    vimtune bench suite                        # all of them
    vimtune bench suite --only scan_1thread conv --out-dir /tmp/trial
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vimtune.bench.targets import targets_markdown

RESULTS = Path("benchmarks/results")
INFER_MODELS = ("--settings", "vim_tiny_patch16_224", "deit_tiny_patch16_224")
BOTH_LINEARS = ("--cpu-matmul", "torch", "onednn")


@dataclass(frozen=True)
class SuiteRun:
    """One command of the suite: ``vimtune bench BENCHMARK OPTIONS --out DIR/STEM``."""

    stem: str
    benchmark: str
    options: tuple[str, ...]

    def argv(self, out_dir: Path = RESULTS) -> list[str]:
        """The benchmark's options, ``--out`` included."""
        return [*self.options, "--out", str(out_dir / self.stem)]

    def results_json(self, out_dir: Path, machine: dict[str, Any]) -> Path:
        """The JSON file the command writes on ``machine`` (a :func:`~vimtune.bench.runner.machine_description`)."""
        from vimtune.bench.runner import result_stem

        stem = result_stem(out_dir / self.stem, machine)
        return stem.with_name(stem.name + ".json")

    def command(self, out_dir: Path = RESULTS) -> str:
        """The command line as a user would type it."""
        return shlex.join(["vimtune", "bench", self.benchmark, *self.argv(out_dir)])


SUITE = (
    SuiteRun("scan_1thread", "scan", ("--backends", "cpu", "mixer", "--shapes", "tiny-224", "small-224",
                                      "--threads", "1", "--budget-s", "10")),
    SuiteRun("scan_large_1thread", "scan", ("--backends", "cpu", "mixer", "--shapes", "small-224-b32", "tiny-1248",
                                            "--threads", "1", "--budget-s", "10")),
    SuiteRun("conv", "conv", ("--shapes", "tiny-224", "small-224", "--budget-s", "3")),
    SuiteRun("step_breakdown", "step", ("--dtypes", "float32", "bfloat16", "--breakdown", "--repeats", "2",
                                        "--rounds", "2", "--clock", "cpu")),
    SuiteRun("step_linears", "step", ("--dtypes", "float32", *BOTH_LINEARS, "--breakdown", "--repeats", "2",
                                      "--rounds", "2", "--clock", "cpu")),
    SuiteRun("step_infer", "step", ("--mode", "infer", *INFER_MODELS, "--batch", "8", "--dtypes", "float32",
                                    "bfloat16", "--breakdown", "--repeats", "3", "--rounds", "3")),
    SuiteRun("step_infer_linears", "step", ("--mode", "infer", *INFER_MODELS, "--batch", "8", "--dtypes", "float32",
                                            *BOTH_LINEARS, "--repeats", "3", "--rounds", "3", "--breakdown")),
    SuiteRun("step_infer_1248", "step", ("--mode", "infer", *INFER_MODELS, "--batch", "1", "--img-size", "1248",
                                         "--dtypes", "float32", "bfloat16", "--breakdown", "--repeats", "2",
                                         "--rounds", "2")),
    SuiteRun("step_infer_1248_linears", "step", ("--mode", "infer", *INFER_MODELS, "--batch", "1", "--img-size",
                                                 "1248", "--dtypes", "float32", *BOTH_LINEARS, "--breakdown",
                                                 "--repeats", "2", "--rounds", "2")),
    SuiteRun("resolution", "resolution", ("--repeats", "2", "--rounds", "2")),
)
"""The commands, in the order they run (the result files' stems are unique)."""


def _holds_error(value: Any) -> bool:
    """Whether a JSON value has an ``error`` key at any depth (how the benchmarks record a failed worker)."""
    if isinstance(value, dict):
        return "error" in value or any(_holds_error(v) for v in value.values())
    return isinstance(value, list) and any(_holds_error(v) for v in value)


MTIME_SLACK_S = 2.0
"""How far a file's modification time may lag the clock: Linux stamps files from a coarse clock (up to a
scheduler tick behind ``time.time()``), and some file systems keep whole or even seconds."""


def outcome(status: int, results: Path, started: float) -> str:
    """``"ok"``, or why a run that exited with ``status`` and should have written ``results`` (a JSON file,
    after the time ``started``, give or take :data:`MTIME_SLACK_S`) failed."""
    if status != 0:
        return f"failed (exit {status})"
    if not results.is_file() or results.stat().st_mtime < started - MTIME_SLACK_S:
        return f"failed: wrote no {results.name}"
    try:
        rows = json.loads(results.read_text()).get("rows", [])
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        return f"failed: {results.name} is not a results file"
    failed = sum(_holds_error(row) for row in rows)
    return f"failed: {failed} of {len(rows)} rows hold an error" if failed else "ok"


def run_suite(runs: list[SuiteRun], out_dir: Path) -> list[tuple[SuiteRun, str, float]]:
    """Run each of ``runs`` in a fresh ``python -m vimtune bench`` process (its output goes to this terminal);
    returns (run, :func:`outcome`, seconds) per run. Ctrl-C ends the suite: the run it stopped is
    ``"interrupted"``, the later ones are not run (and not listed)."""
    from vimtune.bench.runner import machine_description

    machine = machine_description()
    done = []
    for index, run in enumerate(runs, 1):
        print(f"\n[{index}/{len(runs)}] {run.command(out_dir)}", flush=True)
        started, start = time.time(), time.perf_counter()
        try:
            status = subprocess.run([sys.executable, "-m", "vimtune", "bench", run.benchmark, *run.argv(out_dir)],
                                    check=False).returncode
        except KeyboardInterrupt:
            done.append((run, "interrupted", time.perf_counter() - start))
            break
        done.append((run, outcome(status, run.results_json(out_dir, machine), started),
                     time.perf_counter() - start))
    return done


def summary(done: list[tuple[SuiteRun, str, float]]) -> str:
    """One line per run: its stem, how it ended and how long it took."""
    lines = ["", "| result files | status | minutes |", "|---|---|---:|"]
    lines += [f"| {run.stem} | {ended} | {seconds / 60:.1f} |" for run, ended, seconds in done]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``vimtune bench suite``."""
    parser = argparse.ArgumentParser(prog="vimtune bench suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=[run.stem for run in SUITE], metavar="STEM",
                        help="run only these, in the suite's order (result file stems: "
                        + ", ".join(run.stem for run in SUITE) + ")")
    parser.add_argument("--out-dir", type=Path, default=RESULTS,
                        help=f"folder of the result files (default {RESULTS}, the committed ones)")
    parser.add_argument("--list", action="store_true", help="print the commands and run nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = [run for run in SUITE if args.only is None or run.stem in args.only]
    if args.list:
        print("\n".join(run.command(args.out_dir) for run in runs))
        return 0
    load = os.getloadavg()[0]
    if load > 1.0:
        print(f"vimtune bench suite: the 1-min load average is {load:.1f}: other work is running, and the "
              "timings will show it", file=sys.stderr)
    done = run_suite(runs, args.out_dir)
    print(summary(done))
    if done and done[-1][1] == "interrupted":
        return 130
    print(f"\nIssue #17's targets from the result files in {args.out_dir} (`vimtune bench targets`):\n")
    try:
        print(targets_markdown(args.out_dir))
    except ValueError as error:  # a file there that is not JSON; the summary above has been printed
        print(f"no targets table: {error}")
    return 0 if all(ended == "ok" for _, ended, _ in done) else 1


if __name__ == "__main__":
    raise SystemExit(main())
