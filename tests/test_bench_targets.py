"""``vimtune bench targets``: issue #17's table computed from result files, and the commit those files record."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vimtune.bench import runner, source, targets
from vimtune.bench.suite import SUITE
from vimtune.bench.targets import TARGETS, Target, targets_markdown

CPU_A, CPU_B = "cpu-a-avx512", "cpu-b-avx2"
SCAN = "vimtune bench scan --backends cpu mixer --shapes tiny-224 small-224 --threads 1"
INFER_224 = "vimtune bench step --mode infer --batch 8"
INFER_1248 = "vimtune bench step --mode infer --batch 1 --img-size 1248"
TRAIN = "vimtune bench step --clock cpu"
VIM_T, DEIT_T = ("vim_tiny_patch16_224", "- (plain model)"), ("deit_tiny_patch16_224", "- (plain model)")
VIM_S, DEIT_S = ("vim_small_patch16_224", "svp"), ("deit_small_patch16_224", "full (plain model)")
SCAN_FWD = "scan forward, models' kernel: time / exp floor"
SCAN_FWD_CPU = "scan forward, `selective_scan` kernel: time / exp floor"
SCAN_BOTH = "scan forward + backward, models' kernel: time / exp floor"
SPEED_224 = "Vim-Ti / DeiT-Ti speed, batch 8, 224 px, float32"
SPEED_1248 = "Vim-Ti / DeiT-Ti speed, batch 1, 1248 px, float32"
TRAIN_F32 = "training step, batch 32: vim_small + SVP / deit_small full, float32"
TRAIN_BF16 = "training step, batch 32: vim_small + SVP / deit_small full, bfloat16 autocast"


def _write(folder: Path, stem: str, cpu: str, command: str, rows: list[dict[str, Any]], **fields: Any) -> Path:
    machine = {"cpu": cpu.upper(), "cpu_id": "cpu family 1 model 2 stepping 3", "isa": [cpu.rsplit("-", 1)[-1]]}
    path = folder / f"{stem}.{cpu}.json"
    path.write_text(json.dumps({"machine": machine, "command": command, "rows": rows, **fields}))
    return path


def _scan_rows(times: dict[str, float], mode: str = "forward", shape: str = "tiny-224") -> list[dict[str, Any]]:
    return [{"shape": shape, "mode": mode, "backend": name, "seconds": s} for name, s in times.items()]


def _step_rows(dtype: str, times: dict[tuple[str, str], tuple[float, float]],
               matmul: str | None = None) -> list[dict[str, Any]]:
    """Rows of a step file: (model, method) -> (wall s, CPU s)."""
    return [{"dtype": dtype, "cpu_matmul": matmul, "model": model, "method": method,
             "step": {"seconds": wall, "cpu_seconds": cpu}} for (model, method), (wall, cpu) in times.items()]


def _table_rows(markdown: str) -> dict[str, list[str]]:
    """Target label (without its file) -> the cells of its row."""
    rows = {}
    for line in markdown.splitlines()[2:]:
        label, *cells = [part.strip() for part in line.strip("|").split("|")]
        rows[label.split(" (`")[0]] = cells
    return rows


def test_the_table_computes_each_ratio_from_the_files_and_says_met_or_missed(tmp_path: Path) -> None:
    floors = {"exp floor": 4.0, "exp2 floor": 1.0}
    _write(tmp_path, "scan_1thread", CPU_A, SCAN,
           _scan_rows(floors | {"mixer": 1.5, "cpu": 2.5}) + _scan_rows(floors | {"mixer": 6.0}, "fwd+bwd")
           + _scan_rows({"exp2 floor": 1.0, "mixer": 9.0}, shape="small-224"))  # another shape: not read
    _write(tmp_path, "scan_1thread", CPU_B, SCAN, _scan_rows({"exp floor": 4.0, "mixer": 2.0}))
    _write(tmp_path, "step_infer", CPU_A, INFER_224, _step_rows("float32", {VIM_T: (0.10, 9.0), DEIT_T: (0.09, 1.0)}),
           clock="wall")
    _write(tmp_path, "step_infer_linears", CPU_A, INFER_224 + " --cpu-matmul torch onednn",
           _step_rows("float32", {VIM_T: (0.2, 0), DEIT_T: (0.1, 0)}, "onednn")
           + _step_rows("float32", {VIM_T: (0.3, 0), DEIT_T: (0.1, 0)}, "torch"))
    # training: the CPU time of a --clock cpu file (the wall times would give the opposite verdict)
    _write(tmp_path, "step_breakdown", CPU_A, TRAIN, _step_rows("float32", {VIM_S: (1.0, 8.0), DEIT_S: (2.0, 4.0)}),
           clock="cpu")
    _write(tmp_path, "step", CPU_A, TRAIN, _step_rows("bfloat16", {VIM_S: (9.0, 3.0), DEIT_S: (1.0, 2.0)}), clock="cpu")
    markdown = targets_markdown(tmp_path)
    header = markdown.splitlines()[0]
    assert "CPU-A-AVX512 (family 1 model 2, avx512)" in header and header.index("CPU-A") < header.index("CPU-B")
    rows = _table_rows(markdown)
    assert rows[SCAN_FWD] == ["at most 2x", "**met**: 1.50x", "not checked: 0.50x of `torch.exp` (no `torch.exp2`)"]
    assert rows[SCAN_FWD_CPU][1:] == ["missed: 2.50x", "-"]
    assert rows[SCAN_BOTH][1:] == ["**met**: 6.00x", "-"]
    assert rows[SPEED_224] == ["at least 0.8x", "**met**: 0.90x", "-"]
    assert rows[SPEED_224 + ", oneDNN linears"][1] == "missed: 0.50x"  # the onednn rows, not the torch ones
    assert rows[TRAIN_F32] == ["at most 1.6x", "missed: 2.00x", "-"]
    assert rows[TRAIN_BF16] == ["at most 2x", "**met**: 1.50x (`step`)", "-"]  # no bf16 rows in step_breakdown
    assert rows[SPEED_1248][1:] == ["-", "-"]
    assert rows["vimtune commit of the runs"] == ["", "not recorded in 5 of 5 files", "not recorded in 1 of 1 files"]


def test_a_file_of_another_setting_or_with_failed_rows_is_not_read_as_the_target(tmp_path: Path) -> None:
    rows = _step_rows("float32", {VIM_T: (0.1, 0.2), DEIT_T: (0.3, 0.6)})
    _write(tmp_path, "step_infer", CPU_A, INFER_1248, rows)  # an ad hoc 1248 px run under the 224 px file's name
    _write(tmp_path, "step_infer_1248", CPU_A, INFER_1248, rows)
    failed = _step_rows("bfloat16", {VIM_S: (1.0, 1.0), DEIT_S: (1.0, 1.0)})
    failed[0]["step"]["error"] = "exit 9: killed"
    _write(tmp_path, "step_breakdown", CPU_A, TRAIN, failed, clock="cpu")
    _write(tmp_path, "step", CPU_A, TRAIN, _step_rows("bfloat16", {VIM_S: (1.0, 1.0), DEIT_S: (1.0, 1.0)}))
    rows_of = _table_rows(targets_markdown(tmp_path))
    assert rows_of[SPEED_224][1] == "`step_infer` ran another setting"
    assert rows_of[SPEED_1248][1] == "**met**: 3.00x"
    assert rows_of[TRAIN_BF16][1] == "failed: no time for vim_small_patch16_224"  # not the older `step` file's


def test_a_ratio_on_the_bound_meets_the_target() -> None:
    files = {"s": {"command": "vimtune bench step"}}
    for at_most, ratio, verdict in ((True, 2.0, "**met**"), (True, 2.01, "missed"), (False, 2.0, "**met**"),
                                    (False, 1.99, "missed")):
        target = Target("t", 2.0, at_most, "step", ("s",), lambda results, r=ratio: r)
        assert targets.cell(target, files) == f"{verdict}: {ratio:.2f}x"


def test_the_commit_row_names_each_commit_and_local_changes(tmp_path: Path) -> None:
    rows = _step_rows("float32", {VIM_T: (0.1, 0.2), DEIT_T: (0.1, 0.2)})
    _write(tmp_path, "step_infer", CPU_A, INFER_224, rows, source={"commit": "a" * 40, "src_modified": False})
    _write(tmp_path, "step_infer_1248", CPU_A, INFER_1248, rows, source={"commit": "b" * 40, "src_modified": True})
    _write(tmp_path, "step_linears", CPU_A, TRAIN, rows, source=None)
    assert _table_rows(targets_markdown(tmp_path))["vimtune commit of the runs"] == [
        "", "aaaaaaa, bbbbbbb + changes, not recorded in 1 of 3 files"]


def test_stray_and_malformed_files_give_no_column_or_a_clear_error(tmp_path: Path) -> None:
    assert "vimtune bench suite" in targets_markdown(tmp_path)
    (tmp_path / f"step_infer.{CPU_A}.backup.json").write_text("[]")  # not a result file's name: ignored
    broken = [{"dtype": "float32"}, "not a row", {"model": None, "step": None}]
    _write(tmp_path, "step_infer", CPU_A, INFER_224, broken)
    (tmp_path / f"scan_1thread.{CPU_A}.json").write_text(json.dumps({"rows": None, "machine": {"cpu_id": None}}))
    rows = _table_rows(targets_markdown(tmp_path))
    assert rows[SPEED_224][1:] == ["-"] and rows[SCAN_FWD][1:] == ["`scan_1thread` ran another setting"]
    (tmp_path / f"step_infer.{CPU_A}.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=f"step_infer.{CPU_A}.json is not a results file: expected a JSON object"):
        targets_markdown(tmp_path)
    (tmp_path / f"step_infer.{CPU_A}.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"step_infer.{CPU_A}.json is not a results file"):
        targets_markdown(tmp_path)


def test_the_suite_runs_what_each_target_reads() -> None:
    suite_commands = {run.stem: run.command() for run in SUITE}
    for target in TARGETS:
        assert target.stems[0] in suite_commands, target.label
        assert target.ran_setting({"command": suite_commands[target.stems[0]]}), (target.label, target.setting)


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_source_revision_is_the_checkouts_commit_and_sees_changed_sources(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert source.source_revision(tmp_path) is None  # not a checkout
    (tmp_path / "src" / "vimtune").mkdir(parents=True)
    kernel, readme = tmp_path / "src" / "vimtune" / "kernel.cpp", tmp_path / "README.md"
    kernel.write_text("int x;\n")
    readme.write_text("first\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert source.source_revision(tmp_path) == {"commit": head, "src_modified": False}
    (tmp_path / "src" / "vimtune" / "untracked.py").write_text("")
    readme.write_text("a tracked file outside src/, changed\n")
    assert source.source_revision(tmp_path) == {"commit": head, "src_modified": False}
    kernel.write_text("int y;\n")
    assert source.source_revision(tmp_path) == {"commit": head, "src_modified": True}
    other = tmp_path.parent / (tmp_path.name + "-other")
    other.mkdir()
    _git(other, "init", "-q")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))  # e.g. set by a git hook: not the checkout's
    assert source.source_revision(tmp_path) == {"commit": head, "src_modified": True}


def test_write_results_records_the_checkouts_commit_as_run_source_read_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    machine = {"cpu": "test CPU", "cores": 2, "memory_gib": 1.0, "torch": "x", "threads": 2, "bf16_matmul_isa": set()}
    stem = runner.write_results(tmp_path / "bench", "| t |\n", machine, "vimtune bench x", rows=[])
    capsys.readouterr()
    recorded = json.loads(stem.with_name(stem.name + ".json").read_text())["source"]
    checkout = Path(runner.__file__).resolve().parents[3]
    if shutil.which("git") and (checkout / ".git").exists():
        assert recorded["commit"] == _git(checkout, "rev-parse", "HEAD")
    else:
        assert recorded is None
    assert recorded == source.run_source()
