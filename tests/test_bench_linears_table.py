"""docs/backends.md's MKL / oneDNN table, computed from a CPU's ``*_linears`` result files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vimtune.bench.linears_table import LINEAR_RUNS, linears_markdown

CPU = "cpu-x-avx512"


def _write(folder: Path, stem: str, rows: list[dict[str, Any]], clock: str | None = None) -> None:
    machine = {"cpu": "CPU X", "cpu_id": "cpu family 7 model 8 stepping 1", "isa": ["avx512"]}
    body = {"machine": machine, "command": f"vimtune bench step (for {stem})", "rows": rows}
    if clock:
        body["clock"] = clock
    (folder / f"{stem}.{CPU}.json").write_text(json.dumps(body))


def _row(model: str, method: str, matmul: str, wall: float, cpu: float, dtype: str = "float32") -> dict[str, Any]:
    return {"dtype": dtype, "cpu_matmul": matmul, "model": model, "method": method,
            "step": {"seconds": wall, "cpu_seconds": cpu, "threads": 2}}


def _write_all(folder: Path, skip: tuple[str, str] | None = None) -> None:
    """Every file of the table; inference times wall = i, CPU = 10 i; training clock "cpu"."""
    by_stem: dict[str, list[dict[str, Any]]] = {}
    for i, (stem, _, (model, method)) in enumerate(LINEAR_RUNS, start=1):
        for matmul, scale in (("torch", 3.0), ("onednn", 2.0)):
            if skip != (model, matmul):
                by_stem.setdefault(stem, []).append(_row(model, method, matmul, scale * i, 10 * scale * i))
        by_stem[stem].append(_row(model, method, "onednn", 99.0, 99.0, dtype="bfloat16"))  # another dtype
    for stem, rows in by_stem.items():
        _write(folder, stem, rows, clock="cpu" if stem == "step_linears" else None)


def test_each_row_reads_its_models_two_times_in_the_files_clock(tmp_path: Path) -> None:
    _write_all(tmp_path)
    lines = linears_markdown(tmp_path, CPU).splitlines()
    assert lines[0].startswith("| CPU X (family 7 model 8, avx512), 2 threads, float32 |")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert len(rows) == len(LINEAR_RUNS)
    for i, (row, (stem, label, _)) in enumerate(zip(rows, LINEAR_RUNS, strict=True), start=1):
        cpu_clock = stem == "step_linears"
        scale = 10 * i if cpu_clock else i  # the training rows read CPU seconds, the others wall seconds
        assert row[0] == f"{label} ({'CPU s' if cpu_clock else 's'})"
        assert float(row[1]) == pytest.approx(3.0 * scale, rel=1e-3)
        assert float(row[2]) == pytest.approx(2.0 * scale, rel=1e-3)
        assert row[3] == "1.50x"


def test_a_missing_setting_or_file_is_named(tmp_path: Path) -> None:
    _write_all(tmp_path, skip=("deit_tiny_patch16_224", "onednn"))
    with pytest.raises(ValueError, match=r"step_infer_linears\.cpu-x-avx512\.json: expected one positive float32 "
                                         r"time of deit_tiny"):
        linears_markdown(tmp_path, CPU)
    (tmp_path / f"step_linears.{CPU}.json").unlink()
    with pytest.raises(ValueError, match=r"step_linears\.cpu-x-avx512\.json: no result file"):
        linears_markdown(tmp_path, CPU)
    (tmp_path / f"step_linears.{CPU}.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"step_linears\.cpu-x-avx512\.json is not a results file: expected a JSON"):
        linears_markdown(tmp_path, CPU)


def test_rows_that_failed_or_repeat_give_no_time(tmp_path: Path) -> None:
    _write_all(tmp_path)
    path = tmp_path / f"step_infer_linears.{CPU}.json"
    body = json.loads(path.read_text())
    body["rows"][0]["step"]["error"] = "worker died"  # Vim-Ti's torch-linears row
    path.write_text(json.dumps(body))
    with pytest.raises(ValueError, match=r"vim_tiny_patch16_224 .* found \{'onednn': \[2\.0\]\}"):
        linears_markdown(tmp_path, CPU)
    body["rows"].append(body["rows"][1] | {})  # the onednn row twice, the torch one failed
    del body["rows"][0]["step"]["error"]
    path.write_text(json.dumps(body))
    with pytest.raises(ValueError, match=r"found \{'torch': \[3\.0\], 'onednn': \[2\.0, 2\.0\]\}"):
        linears_markdown(tmp_path, CPU)


def test_the_threads_are_named_only_when_every_step_ran_on_as_many(tmp_path: Path) -> None:
    _write_all(tmp_path)
    path = tmp_path / f"step_linears.{CPU}.json"
    body = json.loads(path.read_text())
    body["rows"][0]["step"]["threads"] = 1
    path.write_text(json.dumps(body))
    assert linears_markdown(tmp_path, CPU).startswith("| CPU X (family 7 model 8, avx512), float32 |")

