"""The report of the VTAB-1k protocol (``--protocol vtab``): tables, seed spread, paper check, plot.

Every accuracy is a final run's test accuracy (train800val200, hyper-parameters chosen on val200).
Means over tasks use the tasks where every method has its final run, so they compare like with
like; what is missing is listed, never silently dropped.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vimtune.bench.transfer.report import MethodSummary, Stat, TransferTable, agreement_lines, machines_text
from vimtune.bench.transfer.vtab import SELECT, VtabPlan, default_lr
from vimtune.demo import METHOD_VARIANTS
from vimtune.viz import plot_accuracy_vs_params


class VtabTable:
    """The records of a results file, read through the plan that produced them."""

    def __init__(self, plan: VtabPlan, records: Mapping[str, Mapping[str, Any]]) -> None:
        self.plan, self.records = plan, records
        self.methods = [m for m in METHOD_VARIANTS if m in plan.methods]  # the one-lr table's row order
        self.complete_tasks = [t for t in plan.tasks if all(self.finals(t, m) for m in plan.methods)]

    def finals(self, task: str, method: str) -> list[Mapping[str, Any]]:
        """The finished final runs of ``method`` on ``task`` (one per seed)."""
        return self.plan.finals(task, method, self.records)

    def stat(self, task: str, method: str) -> Stat | None:
        """Test accuracy of the final runs over their seeds (``None`` before the first one)."""
        finals = self.finals(task, method)
        return Stat.of([r["test_acc"] for r in finals]) if finals else None

    def params(self, method: str, tasks: list[str]) -> float:
        """Mean trainable parameters of ``method`` over ``tasks`` (the head depends on the class count)."""
        return statistics.fmean(self.finals(t, method)[0]["trainable_params"] for t in tasks)

    def summary(self) -> list[MethodSummary]:
        """Per method, means over :attr:`complete_tasks` (empty while no task is complete)."""
        tasks = self.complete_tasks
        if not tasks:
            return []
        rows = []
        for method in self.methods:
            per_task = {t: self.stat(t, method).mean for t in tasks}
            rows.append(MethodSummary(method, self.params(method, tasks), statistics.fmean(per_task.values()),
                                      per_task))
        return rows

    def cost(self, method: str) -> tuple[int, float]:
        """(trials finished, CPU minutes) of ``method``, selection and final runs together."""
        mine = [r for r in self.records.values() if r.get("method") == method]
        return len(mine), sum(r["cpu_seconds"] for r in mine) / 60

    def chosen_text(self, task: str, method: str) -> str:
        """``"lr 3e-03, 20 ep (val 85.0)"``; the grid's progress while it runs; ``"-"`` before."""
        chosen = self.plan.chosen(task, method, self.records)
        if chosen is None:
            grid = self.plan.selection(task, method, self.records)
            done = sum(t.key in self.records for t in grid)
            return f"grid {done}/{len(grid)}" if done else "-"
        rates = self.plan.rates(task, method, self.records)
        edge = " **at grid edge**" if len(rates) > 1 and chosen.lr_factor in (rates[0], rates[-1]) else ""
        return f"lr {chosen.lr:.0e}, {chosen.epochs} ep (val {100 * self.records[chosen.key]['val_acc']:.1f}){edge}"

    def missing(self) -> list[str]:
        """``"task: method, method"`` for every task where some method has no final run yet."""
        lines = []
        for task in self.plan.tasks:
            absent = [m for m in self.plan.methods if not self.finals(task, m)]
            if absent:
                lines.append(f"{task}: {', '.join(absent)}")
        return lines


def accuracy_rows(table: VtabTable) -> list[str]:
    """Markdown: method, parameters, share of full, test accuracy per task, mean, trials, CPU minutes."""
    summary = {s.method: s for s in table.summary()}
    full = summary.get("full")
    head = ["method", "trainable params", "vs full", *table.plan.tasks, "mean", "trials", "CPU min"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for method in table.methods:
        params = sorted({f[0]["trainable_params"] for t in table.plan.tasks if (f := table.finals(t, method))})
        shown = "-" if not params else f"{params[0]:,}" if len(params) == 1 else f"{params[0]:,}-{params[-1]:,}"
        ratio = f"{summary[method].params / full.params:.2%}" if full and method in summary else "-"
        accs = [s.text() if (s := table.stat(t, method)) else "-" for t in table.plan.tasks]
        mean = f"{100 * summary[method].accuracy:.1f}" if method in summary else "-"
        trials, minutes = table.cost(method)
        lines.append("| " + " | ".join([method, shown, ratio, *accs, mean, str(trials), f"{minutes:.0f}"]) + " |")
    return lines


def chosen_rows(table: VtabTable) -> list[str]:
    """Markdown: per method, its default rate and the chosen (rate, epochs, val accuracy) per task."""
    head = ["method", "default lr", *table.plan.tasks]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for method in table.methods:
        cells = [table.chosen_text(t, method) for t in table.plan.tasks]
        lines.append("| " + " | ".join([method, f"{default_lr(method):.3g}", *cells]) + " |")
    return lines


def spread_rows(table: VtabTable) -> list[str]:
    """Markdown: every (task, method) whose final run has several seeds."""
    rows = [(t, m, table.finals(t, m)) for t in table.plan.tasks for m in table.methods
            if len(table.finals(t, m)) > 1]
    if not rows:
        return ["No final run has more than one seed yet."]
    lines = ["| task | method | seeds | test per seed | mean ± std |", "|---|---|---|---|---:|"]
    for task, method, finals in rows:
        seeds = ", ".join(str(r["seed"]) for r in finals)
        per_seed = ", ".join(f"{100 * r['test_acc']:.1f}" for r in finals)
        lines.append(f"| {task} | {method} | {seeds} | {per_seed} | {table.stat(task, method).text()} |")
    return lines


def one_lr_summary(one_lr: TransferTable, tasks: list[str], methods: list[str]) -> dict[str, MethodSummary]:
    """The one-lr table's means (protocol ``val``) over ``tasks``, for the ``methods`` it has on all of them."""
    out = {}
    for method in methods:
        stats = [one_lr.stat(t, method, "val") for t in tasks]
        if tasks and all(stats):
            params = statistics.fmean(one_lr.params(t, method) for t in tasks)
            out[method] = MethodSummary(method, params, statistics.fmean(s.mean for s in stats),
                                        {t: s.mean for t, s in zip(tasks, stats, strict=True)})
    return out


def ranking(summary: Mapping[str, MethodSummary]) -> str:
    """``"lora 86.7 > full 84.4 > ..."``, best first."""
    ordered = sorted(summary.values(), key=lambda s: -s.accuracy)
    return " > ".join(f"{s.method} {100 * s.accuracy:.1f}" for s in ordered)


def comparison_rows(table: VtabTable, before: Mapping[str, MethodSummary]) -> list[str]:
    """Markdown: the one-lr table's mean next to this protocol's, over the complete tasks."""
    after = {s.method: s for s in table.summary()}
    common = [m for m in table.methods if m in after and m in before]
    if not common:
        return ["No task is complete under both protocols yet: nothing to compare."]
    lines = ["| method | one lr (`val` protocol) | vtab protocol | change |", "|---|---:|---:|---:|"]
    for m in common:
        b, a = 100 * before[m].accuracy, 100 * after[m].accuracy
        lines.append(f"| {m} | {b:.1f} | {a:.1f} | {a - b:+.1f} |")
    return [*lines, "", f"- Ranking, one lr: {ranking({m: before[m] for m in common})}.",
            f"- Ranking, vtab protocol: {ranking({m: after[m] for m in common})}."]


def status_lines(table: VtabTable) -> list[str]:
    """Whether the run is complete; if not, what is missing."""
    left = table.plan.runnable(table.records)
    missing = table.missing()
    if not left and not missing:
        return ["Status: **complete** (every planned trial finished)."]
    return ["Status: **INCOMPLETE RUN** (re-run the command to continue; finished trials are cached). "
            f"Tasks with every method's final run: {', '.join(table.complete_tasks) or 'none'}. "
            f"Final runs still missing: {'; '.join(missing) or 'none (only further seeds)'}."]


def write_vtab_outputs(header: dict[str, Any], plan: VtabPlan, records: Mapping[str, Mapping[str, Any]],
                       stem: Path, one_lr: TransferTable | None) -> Path:
    """``STEM.md`` (and ``STEM.png`` once a task is complete); returns the markdown's path."""
    table = VtabTable(plan, records)
    summary = table.summary()
    before = one_lr_summary(one_lr, table.complete_tasks, table.methods) if one_lr else {}
    png = stem.with_suffix(".png")
    if summary:
        plot_accuracy_vs_params(
            [(s.method, s.params, s.accuracy) for s in summary], png,
            title=f"{header['backbone']['name']}: mean test accuracy over {len(table.complete_tasks)} task(s)",
            reference=[(m, s.params, s.accuracy) for m, s in before.items()],
            legend=("vtab protocol (chosen on val, retrained on train800val200)", "one lr, 8 epochs (epoch on val)"),
        )
    selections = sum(1 for r in records.values() if r.get("stage") == SELECT)
    cpu = sum(r["cpu_seconds"] for r in records.values()) / 60
    backbone = header["backbone"]
    lines = [
        f"Written by `{header['command']}` (run from the repository root; it regenerates this file, and the trials "
        "cached in the JSON beside it are not run again).",
        "",
        f"- Protocol `vtab` (VTAB-1k's own): per task and method, a grid of learning rates "
        f"({', '.join(f'{f:.3g}' for f in plan.lr_factors)}) x the method's default (`vimtune.methods.defaults`) "
        f"and {' or '.join(map(str, plan.epochs))} epochs, each trained on `train800.txt` with seed {plan.seed} "
        "and scored by its `val200.txt` accuracy after its last epoch (no test set is evaluated in these runs). "
        f"When the best cell is on the highest (lowest) rate, the grid gains the next rate in that direction "
        f"(same ratio, every epoch count), at most {plan.edge_steps} time(s). "
        "The best cell by val is retrained with the same seed and settings on `train800val200.txt` and tested "
        f"once on `test.txt` after its last epoch. SVP and the best baseline by val on each task: final runs with "
        f"seeds {', '.join(map(str, plan.spread_seeds))} too. Batch {header['trainer']['batch_size']}, AdamW "
        f"(weight decay 1e-4), {header['trainer']['warmup_epochs']} warmup epoch(s) then cosine, no augmentation, "
        "images resized to the backbone's input size, a fresh head.",
        f"- Backbone: `{backbone['name']}` (sha256 {str(backbone['weights_sha256'])[:12]}...). "
        f"Data: `{header['data_root']}`. {machines_text(header['machine'], records.values())}",
        *([f"- **{backbone['warning']}**"] if backbone.get("warning") else []),
        f"- Accuracies in %; `a ± s (n)` = mean ± sample std over n seeds. Means over the tasks where every "
        f"method has its final run ({', '.join(table.complete_tasks) or 'none yet'}). `trials` and `CPU min`: "
        f"every run of the method so far, selection and final ({len(records)} trials, {selections} of them "
        f"selection, {cpu:.0f} CPU minutes in all).",
        "",
        *status_lines(table),
        "",
        "**Test accuracy of the final runs**",
        "",
        *accuracy_rows(table),
        "",
        "**Chosen hyper-parameters**",
        "",
        "Learning rate, epochs; val200 accuracy of the chosen cell; **at grid edge**: the best rate is still the "
        "highest or lowest after the grid grew as far as `--edge-steps` allows.",
        "",
        *chosen_rows(table),
        "",
        "**Seed spread of the final runs**",
        "",
        *spread_rows(table),
        "",
        "**Against the one-lr table**",
        "",
        "Mean test accuracy over the complete tasks, each protocol's:",
        "",
        *(comparison_rows(table, before) if one_lr else ["No one-lr results file to compare with."]),
        "",
        "**Agreement with the SVP paper**",
        "",
        *agreement_lines({s.method: s for s in summary},
                         f"Protocol `vtab`, mean test accuracy over the {len(table.complete_tasks)} complete task(s):"),
    ]
    if summary:
        lines += ["", f"Plot of mean accuracy against trainable parameters, both protocols: `{png.name}` beside "
                      "this file."]
    markdown = stem.with_suffix(".md")
    markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return markdown
