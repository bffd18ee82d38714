"""``vimtune bench transfer``: the grid on a synthetic VTAB task, its cache, the report and the plot."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import timm
from safetensors.torch import save_file

import vimtune.bench.transfer.grid as grid_module
from helpers.runs import make_vtab_task
from helpers.shared_data import require_shared
from helpers.tiny_models import TINY_BACKBONE, TINY_BACKBONE_ARGS
from vimtune.bench.transfer import main
from vimtune.bench.transfer.grid import Grid, ResultsFile
from vimtune.bench.transfer.report import TransferTable, accuracy_table, agreement


def _tiny_args(tmp_path: Path) -> list[str]:
    return [*TINY_BACKBONE_ARGS, "--out", str(tmp_path / "results" / "transfer"), "--work-dir", str(tmp_path / "runs"),
            "--epochs", "1", "--batch-size", "4", "--warmup-epochs", "0"]


def test_transfer_runs_caches_and_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_vtab_task(tmp_path / "vtab" / "toy")
    weights = tmp_path / "pretrained.safetensors"  # a "pretrained" tiny backbone: exercises the fresh-head file
    save_file(timm.create_model("vim_nano_patch4_32", num_classes=10, **TINY_BACKBONE).state_dict(), str(weights))
    argv = [*_tiny_args(tmp_path), "--data-root", str(tmp_path / "vtab"), "--backbone-weights", str(weights),
            "--methods", "linear", "svp", "--spread-seeds", "0", "1", "--spread-methods", "svp", "best"]
    assert main(argv) == 0

    out = tmp_path / "results" / "transfer"
    data = json.loads(out.with_suffix(".json").read_text())
    assert sorted(data["cells"]) == ["toy/linear/0", "toy/linear/1", "toy/svp/0", "toy/svp/1"]
    assert {cell["machine"] for cell in data["cells"].values()} == {data["machine"]}  # each cell names its CPU
    for cell in data["cells"].values():
        assert set(cell["protocols"]) == {"val", "last"}
        assert all(0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["val_acc"] <= 1.0 for r in cell["protocols"].values())
        assert Path(cell["run_dir"], "final_metrics.json").is_file()
    assert data["cells"]["toy/svp/0"]["trainable_params"] > data["cells"]["toy/linear/0"]["trainable_params"]
    assert data["backbone"]["weights_sha256"] and not data["backbone"]["random_init"]
    markdown = out.with_suffix(".md").read_text()
    assert "| svp |" in markdown and "| linear |" in markdown and "| toy | svp | 0, 1 |" in markdown
    assert "Cannot compare with the paper yet" in markdown  # no vpt-deep / full in this grid
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached cell was run again")

    monkeypatch.setattr(grid_module, "run_cell", must_not_run)
    out.with_suffix(".png").unlink()
    assert main(argv) == 0
    assert json.loads(out.with_suffix(".json").read_text())["cells"] == data["cells"]
    assert out.with_suffix(".png").is_file()
    with pytest.raises(ValueError, match="--fresh"):
        main([*argv, "--epochs", "2"])


def _cell(task: str, method: str, test: float, val: float, params: int, seed: int = 0, seconds: float = 60) -> dict:
    record = {"epoch": 1, "test_acc": test, "val_acc": val}
    return {"task": task, "method": method, "seed": seed, "trainable_params": params, "total_params": 1000,
            "protocols": {"val": record, "last": record}, "seconds": seconds}


def test_results_file_merges_cells_saved_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "transfer.json"
    header = {"fingerprint": "abc", "protocol": {}, "backbone": {}}
    first, second = ResultsFile.open(path, header, False), ResultsFile.open(path, header, False)
    first.cells["a/svp/0"] = {"task": "a"}
    first.save()
    second.cells["b/svp/0"] = {"task": "b"}
    second.save()  # opened before ``first`` saved: must not drop its cell
    assert sorted(json.loads(path.read_text())["cells"]) == ["a/svp/0", "b/svp/0"]
    assert sorted(second.cells) == ["a/svp/0", "b/svp/0"]

    other = ResultsFile.open(path, {**header, "fingerprint": "new"}, fresh=True)
    other.cells["c/svp/0"] = {"task": "c"}
    other.save()  # --fresh: the old cells are gone, not merged back
    assert sorted(json.loads(path.read_text())["cells"]) == ["c/svp/0"]
    with pytest.raises(ValueError, match="another protocol"):
        ResultsFile.open(path, header, False)


@pytest.mark.parametrize("other", ["finished", "running"])
def test_grid_skips_a_cell_that_another_process_finished_or_is_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other: str) -> None:
    path = tmp_path / "transfer.json"
    header = {"fingerprint": "abc", "protocol": {}, "backbone": {}}
    theirs = ResultsFile.open(path, header, False)  # another open file: its lock conflicts like another process's
    ran: list[str] = []

    def fake_run_cell(task_dir: Path, run_dir: Path, method: str, seed: int, *args: object, **kwargs: object) -> dict:
        ran.append(method)
        if other == "finished":  # another process finishes "b" meanwhile
            theirs.cells["t/b/0"] = {"task": "t", "by": "other"}
            theirs.save()
        return {"seconds": 1.0, "protocols": {}}

    monkeypatch.setattr(grid_module, "run_cell", fake_run_cell)
    grid = Grid(tmp_path, tmp_path / "runs", None, None, ResultsFile.open(path, header, False), log=lambda _: None)
    with theirs.claim("t/b/0") if other == "running" else contextlib.nullcontext(True) as mine:
        assert mine
        grid.run([("t", "a", 0), ("t", "b", 0), ("t", "c", 0)])
    assert ran == ["a", "c"]
    cells = json.loads(path.read_text())["cells"]
    assert sorted(cells) == (["t/a/0", "t/b/0", "t/c/0"] if other == "finished" else ["t/a/0", "t/c/0"])
    grid.run([("t", "b", 0)])
    assert ran == ["a", "c"] + (["b"] if other == "running" else [])  # a released claim: the cell runs now


def test_agreement_and_best_baseline_follow_the_numbers() -> None:
    paper_like = [_cell(t, "full", 0.90, 0.9, 1000) for t in ("a", "b")] + [
        _cell(t, "linear", 0.70, 0.95, 10) for t in ("a", "b")] + [
        _cell(t, "vpt-deep", 0.80, 0.8, 50) for t in ("a", "b")] + [
        _cell("a", "svp", 0.895, 0.9, 100), _cell("b", "svp", 0.905, 0.9, 100, seconds=120),
        _cell("a", "svp", 0.9, 0.9, 100, 1, seconds=150)]
    table = TransferTable(paper_like)
    assert "| svp | 100 | 10.00% | 1.8 | 89.8 ± 0.4 (2) | 90.5 | 90.1 |" in accuracy_table(table, "val")
    lines = "\n".join(agreement(table))
    assert lines.count("-> agrees") == 3 and "does NOT" not in lines
    assert "10.0% of its trainable parameters" in lines
    assert table.best_baseline() == "linear"  # best on val, although full is best on test
    assert table.stat("a", "svp", "val").n == 2

    svp_behind = [c for c in paper_like if c["method"] != "svp"] + [_cell(t, "svp", 0.75, 0.8, 100) for t in "ab"]
    lines = agreement(TransferTable(svp_behind))
    assert sum("does NOT agree" in line for line in lines) == 2  # below vpt-deep, and far below full
    assert "Cannot compare" in agreement(TransferTable(paper_like[:4]))[0]


@pytest.mark.slow
def test_transfer_on_a_shared_vtab_mini_task(tmp_path: Path) -> None:
    shared_vtab = require_shared("vtab-mini", marker="pneumonia/val200.txt")
    argv = [*_tiny_args(tmp_path), "--data-root", str(shared_vtab), "--tasks", "pneumonia", "--no-pretrained",
            "--methods", "linear", "vpt-deep", "--spread-seeds", "--batch-size", "32"]
    assert main(argv) == 0
    cells = json.loads((tmp_path / "results" / "transfer.json").read_text())["cells"]
    assert sorted(cells) == ["pneumonia/linear/0", "pneumonia/vpt-deep/0"]
    assert cells["pneumonia/linear/0"]["trainable_params"] == 2 * TINY_BACKBONE["embed_dim"] + 2
