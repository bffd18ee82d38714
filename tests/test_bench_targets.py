"""``vimtune bench targets``: issue #17's table computed from result files, and the commit those files record."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vimtune.bench import runner, targets
from vimtune.bench.suite import SUITE
from vimtune.bench.targets import TARGETS, Target, targets_markdown

CPU_A, CPU_B = "cpu-a-avx512", "cpu-b-avx2"


def _write(folder: Path, stem: str, cpu: str, rows: list[dict[str, Any]], **fields: Any) -> None:
    machine = {"cpu": cpu.upper(), "cpu_id": "cpu family 1 model 2 stepping 3", "isa": [cpu.rsplit("-", 1)[-1]]}
    (folder / f"{stem}.{cpu}.json").write_text(json.dumps({"machine": machine, "rows": rows, **fields}))


def _scan_rows(floors: dict[str, float], kernels: dict[str, float], mode: str = "forward") -> list[dict[str, Any]]:
    times = {**floors, **kernels}
    return [{"shape": "tiny-224", "mode": mode, "backend": name, "seconds": s} for name, s in times.items()]


def _step_row(model: str, dtype: str, wall: float, cpu: float, matmul: str | None = None) -> dict[str, Any]:
    return {"dtype": dtype, "cpu_matmul": matmul, "model": model, "method": "-",
            "step": {"seconds": wall, "cpu_seconds": cpu}}


def _table_rows(markdown: str) -> dict[str, list[str]]:
    """Target label (without its file) -> the cells of its row."""
    rows = {}
    for line in markdown.splitlines()[2:]:
        label, *cells = [part.strip() for part in line.strip("|").split("|")]
        rows.setdefault(label.split(" (`")[0], cells)  # the first row of a repeated label ("same, ...") wins
    return rows


def test_the_table_computes_each_ratio_from_the_files_and_says_met_or_missed(tmp_path: Path) -> None:
    _write(tmp_path, "scan_1thread", CPU_A,
           _scan_rows({"exp floor": 4.0, "exp2 floor": 1.0}, {"mixer": 1.5, "cpu": 2.5})
           + _scan_rows({"exp floor": 4.0, "exp2 floor": 1.0}, {"mixer": 6.0, "cpu": 6.5}, "fwd+bwd"))
    _write(tmp_path, "scan_1thread", CPU_B, _scan_rows({"exp floor": 4.0}, {"mixer": 2.0, "cpu": 9.0}))
    _write(tmp_path, "step_infer", CPU_A, [_step_row("vim_tiny_patch16_224", "float32", 0.10, 9.0),
                                           _step_row("deit_tiny_patch16_224", "float32", 0.09, 1.0)], clock="wall")
    failed = _step_row("vim_tiny_patch16_224", "float32", 0.1, 0.2)
    failed["step"]["error"] = "worker died"
    _write(tmp_path, "step_infer", CPU_B, [failed, _step_row("deit_tiny_patch16_224", "float32", 0.1, 0.2)])
    # training: CPU time of a --clock cpu file (the wall times would give the opposite verdict)
    _write(tmp_path, "step_breakdown", CPU_A, [_step_row("vim_small_patch16_224", "float32", 1.0, 8.0),
                                               _step_row("deit_small_patch16_224", "float32", 2.0, 4.0)], clock="cpu")
    _write(tmp_path, "step", CPU_A, [_step_row("vim_small_patch16_224", "bfloat16", 9.0, 3.0),
                                     _step_row("deit_small_patch16_224", "bfloat16", 1.0, 2.0)], clock="cpu")
    markdown = targets_markdown(tmp_path)
    header = markdown.splitlines()[0]
    assert "CPU-A-AVX512 (family 1 model 2, avx512)" in header and header.index("CPU-A") < header.index("CPU-B")
    rows = _table_rows(markdown)
    assert rows["scan forward, models' kernel: time / exp floor"] == [
        "at most 2x", "**met**: 1.50x", "**met**: 0.50x, against `torch.exp` only"]
    assert rows["scan forward, `selective_scan` kernel: time / exp floor"] == [
        "at most 2x", "missed: 2.50x", "missed: 2.25x, against `torch.exp` only"]
    assert rows["scan forward + backward, models' kernel: time / exp floor"][1:] == ["**met**: 6.00x", "-"]
    assert rows["scan forward + backward, `selective_scan` kernel: time / exp floor"][1] == "missed: 6.50x"
    assert rows["Vim-Ti / DeiT-Ti speed, batch 8, 224 px, float32"] == ["at least 0.8x", "**met**: 0.90x", "-"]
    training = "training step, batch 32, 224 px: vim_small + SVP / deit_small full, float32"
    assert rows[training] == ["at most 1.6x", "missed: 2.00x", "-"]
    assert markdown.splitlines()[-2].endswith("| at most 2x | **met**: 1.50x (`step`) | - |")  # bf16: next file
    assert rows["Vim-Ti / DeiT-Ti speed, batch 1, 1248 px, float32"][1:] == ["-", "-"]
    assert rows["vimtune commit of the runs"] == ["", "not recorded in 4 of 4 files", "not recorded in 2 of 2 files"]


def test_a_ratio_on_the_bound_meets_the_target() -> None:
    at_most = Target("t", 2.0, True, ("s",), lambda results: (results["r"], ""))
    at_least = Target("t", 2.0, False, ("s",), lambda results: (results["r"], ""))
    assert targets.cell(at_most, {"s": {"r": 2.0}}) == "**met**: 2.00x"
    assert targets.cell(at_most, {"s": {"r": 2.01}}) == "missed: 2.01x"
    assert targets.cell(at_least, {"s": {"r": 2.0}}) == "**met**: 2.00x"
    assert targets.cell(at_least, {"s": {"r": 1.99}}) == "missed: 1.99x"


def test_the_commit_row_names_each_commit_and_local_changes(tmp_path: Path) -> None:
    rows = [_step_row(f"{model}_tiny_patch16_224", "float32", 0.1, 0.2) for model in ("vim", "deit")]
    _write(tmp_path, "step_infer", CPU_A, rows, source={"commit": "a" * 40, "src_modified": False})
    _write(tmp_path, "step_infer_1248", CPU_A, rows, source={"commit": "b" * 40, "src_modified": True})
    _write(tmp_path, "step_linears", CPU_A, rows, source=None)
    assert _table_rows(targets_markdown(tmp_path))["vimtune commit of the runs"] == [
        "", "aaaaaaa, bbbbbbb + changes, not recorded in 1 of 3 files"]


def test_a_folder_without_result_files_says_how_to_make_them(tmp_path: Path) -> None:
    assert "vimtune bench suite" in targets_markdown(tmp_path)
    (tmp_path / f"step_infer.{CPU_A}.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"step_infer.{CPU_A}.json"):
        targets_markdown(tmp_path)


def test_every_file_the_targets_read_is_one_the_suite_writes() -> None:
    assert {stem for target in TARGETS for stem in target.stems[:1]} <= {run.stem for run in SUITE}


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_source_revision_is_the_checkouts_commit_and_sees_changed_sources(tmp_path: Path) -> None:
    assert runner.source_revision(tmp_path) is None  # not a checkout
    (tmp_path / "src" / "vimtune").mkdir(parents=True)
    kernel = tmp_path / "src" / "vimtune" / "kernel.cpp"
    kernel.write_text("int x;\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert runner.source_revision(tmp_path) == {"commit": head, "src_modified": False}
    (tmp_path / "src" / "vimtune" / "untracked.py").write_text("")
    (tmp_path / "notes.txt").write_text("outside src/")
    assert runner.source_revision(tmp_path) == {"commit": head, "src_modified": False}
    kernel.write_text("int y;\n")
    assert runner.source_revision(tmp_path) == {"commit": head, "src_modified": True}


def test_write_results_records_the_source_revision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    machine = {"cpu": "test CPU", "cores": 2, "memory_gib": 1.0, "torch": "x", "threads": 2, "bf16_matmul_isa": set()}
    stem = runner.write_results(tmp_path / "bench", "| t |\n", machine, "vimtune bench x", rows=[])
    capsys.readouterr()
    assert json.loads(stem.with_name(stem.name + ".json").read_text())["source"] == runner.source_revision()
