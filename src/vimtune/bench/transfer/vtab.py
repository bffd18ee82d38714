"""VTAB-1k's own protocol: hyper-parameters chosen on val, retrained on train800val200, tested once.

Per (task, method):

1. *selection*: every cell of a small grid (learning rate x {1/3, 1, 3} of the method's default,
   times the epoch counts) is trained on ``train800`` with seed 0 and scored by its val200
   accuracy after its LAST epoch (the retrain has no val split, so no earlier epoch can be
   reproduced; each epoch count is a real run with its own cosine schedule). These runs have no
   test split: test is never evaluated for them. When the best cell lies on the grid's highest
   (lowest) rate, the grid grows by one more rate in that direction (same ratio, every epoch
   count), up to ``edge_steps`` times, so that a chosen rate is not just where the grid ended.
2. *final*: the best cell by val (ties: fewer epochs, then the rate nearest the default, then
   the lower rate) is retrained on ``train800val200`` with the same seed and settings and tested
   once, after its last epoch.
3. *seeds*: once every method's selection on a task is done, SVP and the baseline with the best
   chosen val accuracy on that task get their final run with ``spread_seeds`` too.

:meth:`VtabPlan.runnable` lists what can run given the finished trials, task by task (all
methods of the first task before the second task), so partial results are whole tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vimtune.bench.transfer.grid import ResultsFile
from vimtune.demo import METHOD_VARIANTS
from vimtune.methods.defaults import method_defaults

SELECT, FINAL = "select", "final"
#: stage -> (train split, val split, test split) of :data:`vimtune.data.VTAB_SPLIT_FILES`.
STAGE_SPLITS: dict[str, tuple[str, str | None, str | None]] = {
    SELECT: ("train", "val", None),
    FINAL: ("trainval", None, "test"),
}


@dataclass(frozen=True)
class Trial:
    """One training run of the protocol.

    Attributes:
        task: task folder name.
        method: a key of :data:`vimtune.demo.METHOD_VARIANTS`.
        stage: ``select`` (train800, scored on val200) or ``final`` (train800val200, tested).
        lr_factor: the learning rate as a multiple of the method's default.
        epochs: training epochs.
        seed: training seed (also seeds the fresh head).
    """

    task: str
    method: str
    stage: str
    lr_factor: float
    epochs: int
    seed: int

    @property
    def lr(self) -> float:
        """The learning rate: ``lr_factor`` times the method's default."""
        return self.lr_factor * default_lr(self.method)

    @property
    def splits(self) -> tuple[str, str | None, str | None]:
        """(train, val, test) split names of the stage."""
        return STAGE_SPLITS[self.stage]

    @property
    def name(self) -> str:
        """Stage and settings, e.g. ``"select-lr0.3333-e20-s0"``."""
        return f"{self.stage}-lr{self.lr_factor:.4g}-e{self.epochs}-s{self.seed}"

    @property
    def key(self) -> str:
        """The results-file key, e.g. ``"mnist/svp/select-lr1-e20-s0"``."""
        return f"{self.task}/{self.method}/{self.name}"

    def final(self, seed: int) -> Trial:
        """The final run with this trial's settings and ``seed``."""
        return Trial(self.task, self.method, FINAL, self.lr_factor, self.epochs, seed)


def default_lr(method: str) -> float:
    """The default learning rate of a benchmark method (its ``vimtune.methods`` name's)."""
    return method_defaults(METHOD_VARIANTS[method][0]).lr


#: Trains one trial and returns its record: ``val_acc`` (last epoch) for ``select``, ``test_acc``
#: for ``final``, plus anything else worth keeping (parameters, seconds...).
Trainer = Callable[[Trial], dict[str, Any]]


def choose(trials: Sequence[Trial], records: Mapping[str, Mapping[str, Any]]) -> Trial:
    """The selection trial with the best val accuracy; reads nothing but ``val_acc``.

    Ties go to fewer epochs, then the rate nearest the default (in ratio), then the lower rate.
    """
    def rank(trial: Trial) -> tuple[float, int, float, float]:
        return (-records[trial.key]["val_acc"], trial.epochs, abs(math.log(trial.lr_factor)), trial.lr_factor)
    return min(trials, key=rank)


@dataclass(frozen=True)
class VtabPlan:
    """The trials of the protocol over ``tasks`` x ``methods``, in the order they should run.

    Attributes:
        tasks: task folder names, most informative first.
        methods: benchmark method names, in order of priority within a task.
        lr_factors: learning rates as multiples of each method's default.
        epochs: epoch counts of the grid.
        seed: the seed of selection and of the first final run.
        spread_seeds: further seeds of the final runs of SVP and the best baseline.
        edge_steps: how many rates the grid may grow past an edge where its best cell lies.
    """

    tasks: Sequence[str]
    methods: Sequence[str]
    lr_factors: Sequence[float] = (1 / 3, 1.0, 3.0)
    epochs: Sequence[int] = (10, 20)
    seed: int = 0
    spread_seeds: Sequence[int] = (1, 2)
    edge_steps: int = 2

    def _cells(self, task: str, method: str, factors: Sequence[float]) -> list[Trial]:
        return [Trial(task, method, SELECT, f, e, self.seed) for e in self.epochs for f in factors]

    def rates(self, task: str, method: str, records: Mapping[str, Any]) -> list[float]:
        """The grid's learning-rate factors, ascending: ``lr_factors``, grown past the edge where its best cell lies.

        Each growth step adds the next rate beyond the edge (the ratio of the two edge rates) once
        every cell of the grid so far is finished and the best of them (by :func:`choose`) is on that
        edge; at most ``edge_steps`` steps.
        """
        factors = sorted(self.lr_factors)
        for _ in range(self.edge_steps if len(factors) > 1 else 0):
            grid = self._cells(task, method, factors)
            if not all(t.key in records for t in grid):
                break
            best = choose(grid, records).lr_factor
            if best == factors[-1]:
                factors.append(factors[-1] * factors[-1] / factors[-2])
            elif best == factors[0]:
                factors.insert(0, factors[0] * factors[0] / factors[1])
            else:
                break
        return factors

    def selection(self, task: str, method: str, records: Mapping[str, Any]) -> list[Trial]:
        """The grid of ``method`` on ``task`` as far as ``records`` have grown it, shorter runs first."""
        return self._cells(task, method, self.rates(task, method, records))

    def chosen(self, task: str, method: str, records: Mapping[str, Any]) -> Trial | None:
        """The selected grid cell, or ``None`` while some cell of the (grown) grid is unfinished."""
        grid = self.selection(task, method, records)
        return choose(grid, records) if all(t.key in records for t in grid) else None

    def best_baseline(self, task: str, records: Mapping[str, Any]) -> str | None:
        """The baseline (not SVP or an ablation) whose chosen cell has the best val accuracy on ``task``.

        ``None`` until every method's grid on ``task`` is done (or when no baseline is planned).
        """
        chosen = {m: self.chosen(task, m, records) for m in self.methods}
        if any(c is None for c in chosen.values()):
            return None
        scores = {m: records[c.key]["val_acc"] for m, c in chosen.items() if not m.startswith("svp")}
        return max(scores, key=lambda m: (scores[m], -self.methods.index(m))) if scores else None

    def spread_methods(self, task: str, records: Mapping[str, Any]) -> list[str]:
        """The methods whose final run gets ``spread_seeds`` on ``task`` (known once its grids are done)."""
        best = self.best_baseline(task, records)
        if best is None:
            return []
        return [m for m in self.methods if m == "svp" or m == best]

    def runnable(self, records: Mapping[str, Any]) -> list[Trial]:
        """The unfinished trials whose inputs are finished, in running order."""
        todo: list[Trial] = []
        for task in self.tasks:
            for method in self.methods:
                chosen = self.chosen(task, method, records)
                if chosen is None:
                    todo += [t for t in self.selection(task, method, records) if t.key not in records]
                elif chosen.final(self.seed).key not in records:
                    todo.append(chosen.final(self.seed))
            for method in self.spread_methods(task, records):
                chosen = self.chosen(task, method, records)
                todo += [chosen.final(s) for s in self.spread_seeds if chosen.final(s).key not in records]
        return todo

    def finals(self, task: str, method: str, records: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The finished final runs of the chosen cell (one per seed; empty before selection ends)."""
        chosen = self.chosen(task, method, records)
        if chosen is None:
            return []
        seeds = [self.seed, *self.spread_seeds]
        return [records[chosen.final(s).key] for s in seeds if chosen.final(s).key in records]


def run_plan(plan: VtabPlan, trainer: Trainer, results: ResultsFile, log: Callable[[str], None] = print) -> None:
    """Run every trial of ``plan`` with ``trainer``, caching each record in ``results`` as it finishes.

    Several processes may share ``results``: each trial is claimed first (an OS lock), a trial
    another process runs is skipped, and when every runnable trial is claimed elsewhere this
    process waits for the first of them. Finished trials (of any process) are never run again.
    """
    while True:
        results.refresh()
        todo = plan.runnable(results.cells)
        if not todo:
            return
        for trial in todo:
            with results.claim(trial.key) as mine:
                if not mine:
                    continue
                results.refresh()
                if trial.key not in results.cells:
                    log(f"[{len(results.cells) + 1}] {trial.key} ({len(todo)} runnable now)")
                    results.add(trial.key, {**trainer(trial), **trial_fields(trial)})
                break
        else:
            log(f"every runnable trial is being run by another process: waiting for {todo[0].key}")
            with results.claim(todo[0].key, wait=True):
                pass


def trial_fields(trial: Trial) -> dict[str, Any]:
    """What a record says about its trial (task, method, stage, seed, rate, epochs, splits)."""
    train, val, test = trial.splits
    return {"task": trial.task, "method": trial.method, "stage": trial.stage, "seed": trial.seed,
            "lr_factor": trial.lr_factor, "lr": trial.lr, "epochs": trial.epochs,
            "splits": {"train": train, "val": val, "test": test}}
