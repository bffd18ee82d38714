"""``vimtune bench suite``: its commands are valid ones of their benchmarks, and failures are reported."""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path

import pytest

from vimtune.bench import suite
from vimtune.bench.suite import RESULTS, SUITE, SuiteRun

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("run", SUITE, ids=lambda run: run.stem)
def test_every_command_parses_with_its_benchmark_and_writes_its_stem(run: SuiteRun, tmp_path: Path) -> None:
    parser = importlib.import_module(f"vimtune.bench.{run.benchmark}").build_parser()
    assert parser.parse_args(run.argv()).out == RESULTS / run.stem
    assert parser.parse_args(run.argv(tmp_path)).out == tmp_path / run.stem


def test_stems_are_unique_and_are_those_of_committed_result_files() -> None:
    stems = [run.stem for run in SUITE]
    assert len(set(stems)) == len(stems)
    for stem in stems:  # the files the docs' targets table cites, on at least one CPU
        assert list((REPO / RESULTS).glob(f"{stem}.*.md")), f"no committed results file for {stem}"


def test_list_prints_the_chosen_commands_and_runs_nothing(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("--list ran a command"))
    assert suite.main(["--list", "--only", "conv", "scan_1thread", "--out-dir", "/tmp/trial"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [run.command(Path("/tmp/trial")) for run in SUITE if run.stem in ("scan_1thread", "conv")]
    assert lines[1] == "vimtune bench conv --shapes tiny-224 small-224 --budget-s 3 --out /tmp/trial/conv"


def test_a_failing_command_does_not_stop_the_others_and_sets_the_exit_status(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A real process for the first (an unknown shape: the benchmark's own argument error), none for the second.
    bad = SuiteRun("bad_shape", "conv", ("--shapes", "no-such-shape"))
    fine = SuiteRun("fine", "conv", ())
    real_run = subprocess.run

    def run_or_pretend(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        if "no-such-shape" in argv:
            return real_run(argv, **kwargs)
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(suite, "SUITE", (bad, fine))
    monkeypatch.setattr(subprocess, "run", run_or_pretend)
    assert suite.main(["--out-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "| bad_shape | failed (exit 2) |" in out
    assert "| fine | ok |" in out
    assert "[2/2] vimtune bench conv --out " + str(tmp_path / "fine") in out
