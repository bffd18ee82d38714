"""``vimtune bench transfer --protocol vtab``: selection on val only, retrain on train800val200, claims, report."""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest

from helpers.runs import make_vtab_task
from helpers.tiny_models import TINY_BACKBONE_ARGS as TINY_ARGS
from vimtune.bench.transfer import main
from vimtune.bench.transfer.grid import ResultsFile
from vimtune.bench.transfer.report import machines_text
from vimtune.bench.transfer.vtab import FINAL, SELECT, Trial, VtabPlan, choose, run_plan
from vimtune.bench.transfer.vtab_report import VtabTable, write_vtab_outputs

HEADER = {"fingerprint": "abc", "protocol": {}, "backbone": {}}


class FakeTrainer:
    """Known accuracies per (method, lr factor, epochs): val for selection runs, test for final runs.

    It records every trial it trains, and fails if a selection run asks for a test split or a
    final run trains on anything but train800val200.
    """

    def __init__(self, val: dict[tuple[str, float, int], float], test: dict[tuple[str, float, int], float]) -> None:
        self.val, self.test, self.trained = val, test, []

    def __call__(self, trial: Trial) -> dict[str, Any]:
        self.trained.append(trial)
        train, val, test = trial.splits
        settings = (trial.method, trial.lr_factor, trial.epochs)
        record = {"trainable_params": 10 if trial.method == "linear" else 100, "cpu_seconds": 60.0}
        if trial.stage == SELECT:
            assert (train, val, test) == ("train", "val", None)
            return {**record, "val_acc": self.val[settings]}
        assert (train, val, test) == ("trainval", None, "test")
        return {**record, "test_acc": self.test[settings] + trial.seed / 1000}


def _plan(**kwargs: Any) -> VtabPlan:
    """The two-method plan on task ``t``; its rate grid stays fixed unless ``edge_steps`` is given."""
    kwargs.setdefault("edge_steps", 0)
    return VtabPlan(tasks=["t"], methods=["svp", "linear"], lr_factors=(1 / 3, 1.0, 3.0), epochs=(2, 4), **kwargs)


def _grid_values(best: tuple[float, int], value: float, others: float) -> dict[tuple[float, int], float]:
    return {(f, e): value if (f, e) == best else others for f in (1 / 3, 1.0, 3.0) for e in (2, 4)}


def _fake(test_best: tuple[float, int]) -> FakeTrainer:
    """SVP is best on val at (3, 4) but best on test at ``test_best``; linear is best on val at (1/3, 2)."""
    val = {("svp", *k): v for k, v in _grid_values((3.0, 4), 0.9, 0.5).items()}
    val |= {("linear", *k): v for k, v in _grid_values((1 / 3, 2), 0.8, 0.4).items()}
    test = {("svp", *k): v for k, v in _grid_values(test_best, 0.99, 0.6).items()}
    test |= {("linear", *k): 0.7 for k in _grid_values((1.0, 2), 0, 0)}
    return FakeTrainer(val, test)


@pytest.mark.parametrize("test_best", [(3.0, 4), (1 / 3, 2), (1.0, 4)])
def test_choice_is_made_on_val_whatever_the_test_accuracies(tmp_path: Path, test_best: tuple[float, int]) -> None:
    trainer = _fake(test_best)
    results = ResultsFile.open(tmp_path / "vtab.json", HEADER, False)
    run_plan(_plan(), trainer, results, log=lambda _: None)

    selection = [t for t in trainer.trained if t.stage == SELECT]
    finals = [t for t in trainer.trained if t.stage == FINAL]
    assert len(selection) == 12 and len(set(selection)) == 12  # 2 methods x 3 rates x 2 epoch counts, once each
    assert all("test_acc" not in results.cells[t.key] for t in selection)  # test never evaluated for selection
    # the final runs: the best-on-val settings, seed 0 then the spread seeds for svp and the best baseline
    assert {(t.method, t.lr_factor, t.epochs, t.seed) for t in finals} == {
        ("svp", 3.0, 4, 0), ("svp", 3.0, 4, 1), ("svp", 3.0, 4, 2),
        ("linear", 1 / 3, 2, 0), ("linear", 1 / 3, 2, 1), ("linear", 1 / 3, 2, 2)}
    assert trainer.trained.index(finals[0]) > max(trainer.trained.index(t) for t in selection if t.method == "svp")
    table = VtabTable(_plan(), results.cells)
    assert table.stat("t", "svp").mean == pytest.approx(0.99 + 0.001 if test_best == (3.0, 4) else 0.6 + 0.001)
    assert table.stat("t", "svp").n == 3


def test_choice_breaks_ties_towards_fewer_epochs_then_the_default_rate() -> None:
    plan = _plan()
    grid = plan.selection("t", "svp", {})
    records = {t.key: {"val_acc": 0.5} for t in grid}
    assert (choose(grid, records).lr_factor, choose(grid, records).epochs) == (1.0, 2)
    records[Trial("t", "svp", SELECT, 1 / 3, 4, 0).key] = {"val_acc": 0.5001}
    assert (choose(grid, records).lr_factor, choose(grid, records).epochs) == (1 / 3, 4)
    del records[grid[0].key]
    assert plan.chosen("t", "svp", records) is None  # unfinished grid: nothing chosen yet


def test_choice_ignores_a_test_accuracy_even_when_a_record_carries_one() -> None:
    grid = _plan().selection("t", "svp", {})
    records = {t.key: {"val_acc": 0.5 + 0.01 * n} for n, t in enumerate(grid)}  # the last cell is best on val
    with_test = {k: {**r, "test_acc": 1.0 - r["val_acc"]} for k, r in records.items()}  # ... and worst on test
    assert choose(grid, with_test) == choose(grid, records) == grid[-1]


def _finish(grid: list[Trial], records: dict[str, Any], best_factor: float) -> None:
    """Record every unfinished cell of ``grid``: val 0.9 at ``best_factor``, 0.5 elsewhere."""
    for t in grid:
        records.setdefault(t.key, {"val_acc": 0.9 if t.lr_factor == best_factor else 0.5})


@pytest.mark.parametrize(("best", "grown"), [(3.0, [1 / 3, 1.0, 3.0, 9.0]), (1 / 3, [1 / 9, 1 / 3, 1.0, 3.0]),
                                             (1.0, [1 / 3, 1.0, 3.0])])
def test_the_rate_grid_grows_past_the_edge_where_its_best_cell_lies(best: float, grown: list[float]) -> None:
    plan = _plan(edge_steps=2)
    records: dict[str, Any] = {}
    assert plan.rates("t", "svp", records) == [1 / 3, 1.0, 3.0]  # nothing finished: the given grid
    _finish(plan.selection("t", "svp", records), records, best)
    assert plan.rates("t", "svp", records) == pytest.approx(grown)
    if len(grown) == 3:  # best inside the grid: chosen at once
        assert plan.chosen("t", "svp", records).lr_factor == best
    else:  # the new rate's cells (both epoch counts) run before anything is chosen
        new = [t for t in plan.runnable(records) if t.method == "svp"]
        assert sorted((t.lr_factor, t.epochs) for t in new) == sorted((grown[0 if best < 1 else -1], e) for e in (2, 4))
        _finish(new, records, best)  # no better there: the old edge stays best and the grid stops
        assert plan.rates("t", "svp", records) == pytest.approx(grown)
        assert plan.chosen("t", "svp", records).lr_factor == best


def test_the_rate_grid_grows_at_most_edge_steps_times() -> None:
    plan = _plan(edge_steps=2)
    records: dict[str, Any] = {}
    for _ in range(5):  # the highest rate always wins
        grid = plan.selection("t", "svp", records)
        top = max(t.lr_factor for t in grid)
        for t in grid:
            records.setdefault(t.key, {"val_acc": t.lr_factor / 100})
        assert top <= 27.0
    assert plan.rates("t", "svp", records) == pytest.approx([1 / 3, 1.0, 3.0, 9.0, 27.0])
    assert plan.chosen("t", "svp", records).lr_factor == pytest.approx(27.0)
    assert VtabTable(plan, records).chosen_text("t", "svp").endswith("**at grid edge**")  # the report says so
    inside = {k: {"val_acc": 0.9 if "lr9-" in k else 0.1} for k in records}
    assert "edge" not in VtabTable(plan, inside).chosen_text("t", "svp")
    assert _plan(edge_steps=0).rates("t", "svp", records) == [1 / 3, 1.0, 3.0]


def test_plan_runs_a_whole_task_before_the_next_one() -> None:
    plan = VtabPlan(tasks=["a", "b"], methods=["svp", "linear"], epochs=(2,), edge_steps=0)
    records: dict[str, Any] = {}
    order = []
    while todo := plan.runnable(records):
        order.append(todo[0])
        records[todo[0].key] = {"val_acc": 0.5, "test_acc": 0.5}
    tasks = [t.task for t in order]
    assert tasks == sorted(tasks, key=["a", "b"].index)  # every trial of task a before any of task b
    assert [t.stage for t in order if t.task == "a"][:4] == [SELECT] * 3 + [FINAL]  # svp's grid, then its final
    assert len(order) == 2 * (2 * (3 + 1) + 2 * 2)  # per task: two grids and finals, two spread seeds each


def _claiming_worker(path: str, key: str, started: Any, release: Any) -> None:
    results = ResultsFile.open(Path(path), HEADER, False)
    with results.claim(key) as mine:
        assert mine
        started.set()
        release.wait(30)


def test_a_cell_claimed_by_another_process_is_not_run_twice(tmp_path: Path) -> None:
    path = tmp_path / "vtab.json"
    plan = VtabPlan(tasks=["t"], methods=["linear"], lr_factors=(1.0, 3.0), epochs=(2,), spread_seeds=(), edge_steps=0)
    first, second = plan.selection("t", "linear", {})
    ctx = multiprocessing.get_context("fork")
    started, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_claiming_worker, args=(str(path), first.key, started, release))
    other.start()
    try:
        assert started.wait(60)
        results = ResultsFile.open(path, HEADER, False)
        with results.claim(first.key) as mine:
            assert not mine  # held by the other process

        def finish_elsewhere() -> None:  # the other process saves its cell, then its claim goes
            theirs = ResultsFile.open(path, HEADER, False)
            theirs.cells[first.key] = {"val_acc": 0.7, "by": "other"}
            theirs.save()
            release.set()

        trained: list[str] = []

        def trainer(trial: Trial) -> dict[str, Any]:
            trained.append(trial.key)
            if trial == second:  # this process has nothing else to run: it must wait for the claim
                threading.Timer(0.5, finish_elsewhere).start()
            return {"val_acc": 0.5, "test_acc": 0.5, "cpu_seconds": 1.0}

        run_plan(plan, trainer, results, log=lambda _: None)
        assert trained == [second.key, first.final(0).key]  # first: run by the other process only
        assert results.cells[first.key]["by"] == "other"
    finally:
        release.set()
        other.join(30)
    with ResultsFile.open(path, HEADER, False).claim(first.key) as mine:
        assert mine  # the claim died with its process


def test_report_marks_an_incomplete_run_and_compares_only_finished_tasks(tmp_path: Path) -> None:
    plan = VtabPlan(tasks=["a", "b"], methods=["svp", "linear"], epochs=(2,), spread_seeds=())
    records: dict[str, Any] = {}
    while (todo := plan.runnable(records)) and todo[0].task == "a":
        records[todo[0].key] = {"val_acc": 0.5, "test_acc": 0.8 if todo[0].method == "svp" else 0.6,
                                "trainable_params": 100, "cpu_seconds": 30.0, "method": todo[0].method,
                                "stage": todo[0].stage, "seed": todo[0].seed}
    header = {"command": "vimtune bench transfer --protocol vtab", "backbone": {"name": "m", "weights_sha256": "x"},
              "data_root": "d", "machine": "cpu", "trainer": {"batch_size": 32, "warmup_epochs": 1}}
    markdown = write_vtab_outputs(header, plan, records, tmp_path / "vtab", None).read_text()
    assert "INCOMPLETE RUN" in markdown and "Final runs still missing: b: svp, linear" in markdown
    assert "| svp | 100 | - | 80.0 | - | 80.0 | 4 | 2 |" in markdown  # mean over the complete task a only
    assert "lr 9e-04, 2 ep (val 50.0)" in markdown
    assert "Cannot compare with the paper yet" in markdown
    assert (tmp_path / "vtab.png").read_bytes()[:4] == b"\x89PNG"


def test_report_names_every_machine_the_trials_ran_on() -> None:
    records = [{"machine": "zen5"}, {"machine": "zen5"}, {"machine": "zen4"}, {}]
    assert machines_text("zen5", records) == "Machines, by trials run: zen5 (2); zen4 (1); not recorded (1)."
    assert machines_text("zen5", [{"machine": "zen5"}]) == "Machine: zen5."
    assert machines_text("zen5", [{}]) == "Machine: zen5."  # a file from before trials named theirs


def test_vtab_protocol_end_to_end_on_a_tiny_task(tmp_path: Path) -> None:
    make_vtab_task(tmp_path / "vtab" / "toy")
    out = tmp_path / "results" / "vtab"
    argv = ["--protocol", "vtab", *TINY_ARGS, "--no-pretrained", "--data-root", str(tmp_path / "vtab"),
            "--out", str(out), "--work-dir", str(tmp_path / "runs"), "--methods", "linear", "svp",
            "--lr-factors", "1", "--grid-epochs", "1", "--batch-size", "4", "--warmup-epochs", "0",
            "--spread-seeds", "0", "1", "--compare", str(tmp_path / "none.json")]
    assert main(argv) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    stages = sorted((c["method"], c["stage"], c["seed"]) for c in data["cells"].values())
    assert stages == sorted([("linear", SELECT, 0), ("svp", SELECT, 0),
        ("linear", FINAL, 0), ("linear", FINAL, 1), ("svp", FINAL, 0), ("svp", FINAL, 1)])
    assert {cell["machine"] for cell in data["cells"].values()} == {data["machine"]}  # each trial names its CPU
    for cell in data["cells"].values():
        train_list = Path(cell["run_dir"], "config.yaml").read_text()
        assert f"train_split: {cell['splits']['train']}" in train_list
        if cell["stage"] == SELECT:
            assert "test_acc" not in cell and len(cell["val_curve"]) == 1 and cell["val_acc"] == cell["val_curve"][-1]
            assert not Path(cell["run_dir"], "final_metrics.json").read_text().count('"test_top1"')
        else:
            assert cell["splits"]["train"] == "trainval" and 0 <= cell["test_acc"] <= 1
    markdown = out.with_suffix(".md").read_text()
    assert "Status: **complete**" in markdown and "| svp |" in markdown
    out.with_suffix(".md").unlink()
    assert main([*argv, "--methods", "linear", "svp", "full", "--report-only"]) == 0  # runs nothing
    assert json.loads(out.with_suffix(".json").read_text())["cells"] == data["cells"]
    assert "Final runs still missing: toy: full" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        main([*argv, "--epochs", "3"])  # a one-lr option is refused, not ignored
