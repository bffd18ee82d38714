"""``vimtune bench suite``: its commands are valid ones of their benchmarks, and failures are reported."""

from __future__ import annotations

import importlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from vimtune.bench import suite
from vimtune.bench.runner import cpu_slug as machine_slug
from vimtune.bench.runner import machine_description, write_results
from vimtune.bench.suite import RESULTS, SUITE, SuiteRun

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("run", SUITE, ids=lambda run: run.stem)
def test_every_command_parses_with_its_benchmark_and_writes_its_stem(run: SuiteRun, tmp_path: Path) -> None:
    parser = importlib.import_module(f"vimtune.bench.{run.benchmark}").build_parser()
    assert parser.parse_args(run.argv()).out == RESULTS / run.stem
    assert parser.parse_args(run.argv(tmp_path)).out == tmp_path / run.stem


@pytest.mark.parametrize("run", [run for run in SUITE if run.benchmark == "step"], ids=lambda run: run.stem)
def test_the_models_of_every_setting_are_registered_with_timm(run: SuiteRun) -> None:
    import timm

    import vimtune.models  # noqa: F401  (registers vim_*)

    settings = importlib.import_module("vimtune.bench.step").build_parser().parse_args(run.argv()).settings
    assert settings and all(timm.is_model(item.partition(":")[0]) for item in settings), settings


def test_stems_are_unique_and_are_those_of_committed_result_files() -> None:
    stems = [run.stem for run in SUITE]
    assert len(set(stems)) == len(stems)
    for stem in stems:  # the files the docs' targets table cites, on at least one CPU
        assert list((REPO / RESULTS).glob(f"{stem}.*.md")), f"no committed results file for {stem}"


def test_the_suite_looks_for_the_json_file_the_benchmarks_write(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    machine = machine_description()
    run = SUITE[0]
    write_results(tmp_path / run.stem, "table", machine, run.command(tmp_path), rows=[])
    capsys.readouterr()
    assert run.results_json(tmp_path, machine).is_file()
    assert suite.outcome(0, run.results_json(tmp_path, machine), 0.0) == "ok"


def test_list_prints_the_chosen_commands_and_runs_nothing(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("--list ran a command"))
    assert suite.main(["--list", "--only", "conv", "scan_1thread", "--out-dir", "/tmp/trial"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [run.command(Path("/tmp/trial")) for run in SUITE if run.stem in ("scan_1thread", "conv")]
    assert lines[1] == "vimtune bench conv --shapes tiny-224 small-224 --budget-s 3 --out /tmp/trial/conv"


def test_a_failing_command_does_not_stop_the_others_and_sets_the_exit_status(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A real process for the first (an unknown shape: the benchmark's own argument error); the second only
    # writes a clean results file where the benchmark would.
    bad = SuiteRun("bad_shape", "conv", ("--shapes", "no-such-shape"))
    fine = SuiteRun("fine", "conv", ())
    real_run = subprocess.run
    machine = machine_description()

    def run_or_pretend(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        if "no-such-shape" in argv:
            return real_run(argv, **kwargs)
        fine.results_json(tmp_path, machine).write_text(json.dumps({"rows": [{"kernel": 1.0}]}))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(suite, "SUITE", (bad, fine))
    monkeypatch.setattr(subprocess, "run", run_or_pretend)
    assert suite.main(["--out-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "| bad_shape | failed (exit 2) |" in out
    assert "| fine | ok |" in out
    assert "[2/2] vimtune bench conv --out " + str(tmp_path / "fine") in out
    assert f"Issue #17's targets from the result files in {tmp_path}" in out


def test_the_suite_ends_with_the_targets_table_of_the_files_it_wrote(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = next(run for run in SUITE if run.stem == "step_infer")
    machine = machine_description()
    rows = [{"dtype": "float32", "cpu_matmul": None, "model": f"{model}_tiny_patch16_224", "method": "- (plain model)",
             "step": {"seconds": seconds, "cpu_seconds": seconds}} for model, seconds in (("vim", 0.2), ("deit", 0.1))]

    def pretend(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        results = {"machine": {"cpu": "x"}, "command": run.command(tmp_path), "rows": rows}
        run.results_json(tmp_path, machine).write_text(json.dumps(results))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(suite, "SUITE", (run,))
    monkeypatch.setattr(subprocess, "run", pretend)
    assert suite.main(["--out-dir", str(tmp_path)]) == 0
    assert "| at least 0.8x | missed: 0.50x |" in capsys.readouterr().out
    run.results_json(tmp_path, machine).with_name(f"scan_1thread.{machine_slug(machine)}.json").write_text("{")
    assert suite.main(["--out-dir", str(tmp_path)]) == 0  # the runs went well; the table is left out, and why
    assert "no targets table: " in capsys.readouterr().out


def test_a_run_that_exits_0_fails_without_a_fresh_results_file_or_with_error_rows(tmp_path: Path) -> None:
    results = tmp_path / "step.cpu.json"
    assert suite.outcome(0, results, time.time()) == "failed: wrote no step.cpu.json"
    results.write_text(json.dumps({"rows": [{"step": {"seconds": 1.0}}, {"step": {"error": "exit 1: killed"}}]}))
    assert suite.outcome(0, results, time.time() + 60) == "failed: wrote no step.cpu.json"  # an older file
    # written right after the run started: a file's time may lag the clock (a coarse clock stamps files)
    assert suite.outcome(0, results, results.stat().st_mtime + 0.5) == "failed: 1 of 2 rows hold an error"
    assert suite.outcome(0, results, 0.0) == "failed: 1 of 2 rows hold an error"
    results.write_text(json.dumps({"rows": [{"memory": [{"seconds": 1.0}, {"error": "exit 9"}]}, {"seconds": 2.0}]}))
    assert suite.outcome(0, results, 0.0) == "failed: 1 of 2 rows hold an error"
    results.write_text(json.dumps({"rows": [{"seconds": 1.0}], "max_error_vs_float64": {"cpu": 1e-7}}))
    assert suite.outcome(0, results, 0.0) == "ok"
    assert suite.outcome(3, results, 0.0) == "failed (exit 3)"
    results.write_text('{"rows": [')  # cut short
    assert suite.outcome(0, results, 0.0) == "failed: step.cpu.json is not a results file"


def test_ctrl_c_ends_the_suite_with_a_summary_of_what_ran(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    runs = (SuiteRun("first", "conv", ()), SuiteRun("second", "conv", ()), SuiteRun("third", "conv", ()))
    machine = machine_description()

    def first_then_ctrl_c(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        if str(tmp_path / "second") in argv:
            raise KeyboardInterrupt
        runs[0].results_json(tmp_path, machine).write_text(json.dumps({"rows": []}))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(suite, "SUITE", runs)
    monkeypatch.setattr(subprocess, "run", first_then_ctrl_c)
    assert suite.main(["--out-dir", str(tmp_path)]) == 130
    out = capsys.readouterr().out
    assert "| first | ok |" in out and "| second | interrupted |" in out
    assert "third" not in out
