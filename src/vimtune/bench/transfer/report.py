"""Tables and conclusions of the transfer benchmark, computed from the cached cells.

Every number is a test accuracy under a selection protocol that never looks at the test set:
``val`` (the epoch with the best val top-1) or ``last`` (the last epoch). Means over tasks use
the tasks that every method in the table has, so that the means compare like with like.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vimtune.demo import METHOD_VARIANTS

PROTOCOL_TITLES = {"val": "epoch selected on val (protocol `val`)", "last": "last epoch (protocol `last`)"}
#: SVP counts as "close to full fine-tuning" when its mean accuracy is at most this many points below.
CLOSE_POINTS = 1.0


def is_baseline(method: str) -> bool:
    """Every method but SVP and its ablations."""
    return not method.startswith("svp")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of an accuracy over ``n`` seeds (fractions)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))

    def text(self) -> str:
        """``"85.3"`` or, over several seeds, ``"85.3 ± 0.4 (3)"`` (percent)."""
        spread = f" ± {100 * self.std:.1f} ({self.n})" if self.n > 1 else ""
        return f"{100 * self.mean:.1f}{spread}"


@dataclass(frozen=True)
class MethodSummary:
    """One method over the common tasks: mean trainable parameters and mean accuracy (fraction)."""

    method: str
    params: float
    accuracy: float
    per_task: dict[str, float]


class TransferTable:
    """The cells of a results file, grouped by (task, method) over seeds."""

    def __init__(self, cells: list[dict[str, Any]]) -> None:
        self.cells = cells
        self.tasks = sorted({c["task"] for c in cells})
        present = {c["method"] for c in cells}
        self.methods = [m for m in METHOD_VARIANTS if m in present]
        self._by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for cell in cells:
            self._by[cell["task"], cell["method"]].append(cell)
        self.common_tasks = [t for t in self.tasks if all((t, m) in self._by for m in self.methods)]

    def stat(self, task: str, method: str, protocol: str, split: str = "test") -> Stat | None:
        """Accuracy on ``split`` (``test`` or ``val``) under ``protocol``, over the cell's seeds."""
        values = [c["protocols"][protocol][f"{split}_acc"] for c in self._by.get((task, method), [])
                  if protocol in c["protocols"]]
        return Stat.of(values) if values else None

    def params(self, task: str, method: str) -> int:
        """Trainable parameters of ``method`` on ``task`` (the head depends on the class count)."""
        return self._by[task, method][0]["trainable_params"]

    def summary(self, protocol: str) -> list[MethodSummary]:
        """Per method, means over :attr:`common_tasks` (empty when no task has every method)."""
        if not self.common_tasks:
            return []
        rows = []
        for method in self.methods:
            per_task = {t: self.stat(t, method, protocol).mean for t in self.common_tasks}
            params = statistics.fmean(self.params(t, method) for t in self.common_tasks)
            rows.append(MethodSummary(method, params, statistics.fmean(per_task.values()), per_task))
        return rows

    def minutes_per_cell(self, method: str) -> float:
        """Mean wall-clock minutes of ``method``'s cells (training, validation and both test passes)."""
        return statistics.fmean(c["seconds"] for t in self.tasks for c in self._by.get((t, method), [])) / 60

    def best_baseline(self) -> str | None:
        """The baseline with the best mean *val* accuracy (protocol ``val``) over its tasks."""
        scores = {}
        for method in filter(is_baseline, self.methods):
            stats = [self.stat(t, method, "val", split="val") for t in self.tasks]
            if any(stats):
                scores[method] = statistics.fmean(s.mean for s in stats if s)
        return max(scores, key=scores.get) if scores else None

    def spread_rows(self) -> list[tuple[str, str, list[dict[str, Any]]]]:
        """(task, method, cells) for every (task, method) run with more than one seed."""
        return [(t, m, sorted(self._by[t, m], key=lambda c: c["seed"])) for t in self.tasks for m in self.methods
                if len(self._by.get((t, m), [])) > 1]


def accuracy_table(table: TransferTable, protocol: str) -> list[str]:
    """Markdown rows: method, trainable parameters, share of full, minutes per cell, accuracy per task, mean."""
    summary = {s.method: s for s in table.summary(protocol)}
    full = summary.get("full")
    head = ["method", "trainable params", "vs full", "min/cell", *table.tasks, "mean"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for method in table.methods:
        params = sorted({table.params(t, method) for t in table.tasks if table.stat(t, method, protocol)})
        shown = f"{params[0]:,}" if len(params) == 1 else f"{params[0]:,}-{params[-1]:,}"
        ratio = f"{summary[method].params / full.params:.2%}" if full and method in summary else "-"
        accs = [s.text() if (s := table.stat(t, method, protocol)) else "-" for t in table.tasks]
        mean = f"{100 * summary[method].accuracy:.1f}" if method in summary else "-"
        minutes = f"{table.minutes_per_cell(method):.1f}"
        lines.append("| " + " | ".join([method, shown, ratio, minutes, *accs, mean]) + " |")
    return lines


def spread_table(table: TransferTable) -> list[str]:
    """Markdown rows of every (task, method) run with several seeds."""
    rows = table.spread_rows()
    if not rows:
        return ["No (task, method) was run with more than one seed (see `--spread-seeds`)."]
    lines = ["| task | method | seeds | test, `val` protocol (per seed) | `val` mean ± std | `last` mean ± std |",
             "|---|---|---|---|---:|---:|"]
    for task, method, cells in rows:
        per_seed = ", ".join(f"{100 * c['protocols']['val']['test_acc']:.1f}" for c in cells)
        seeds = ", ".join(str(c["seed"]) for c in cells)
        lines.append(f"| {task} | {method} | {seeds} | {per_seed} | {table.stat(task, method, 'val').text()} | "
                     f"{table.stat(task, method, 'last').text()} |")
    return lines


def _compare(acc: dict[str, float], better: str, worse: str) -> str:
    verdict = "agrees" if acc[better] > acc[worse] else "does NOT agree"
    return (f"- {better} > {worse}: {100 * acc[better]:.1f} vs {100 * acc[worse]:.1f} -> {verdict} "
            "with the paper.")


def agreement(table: TransferTable) -> list[str]:
    """Whether SVP > VPT-deep > linear probe, and SVP is close to full fine-tuning (mean over common tasks)."""
    summary = {s.method: s for s in table.summary("val")}
    return agreement_lines(summary, f"Protocol `val`, mean test accuracy over the {len(table.common_tasks)} "
                                    "task(s) every method has:")


def agreement_lines(summary: dict[str, MethodSummary], title: str) -> list[str]:
    """The paper check on per-method means: SVP > VPT-deep > linear probe, SVP close to full."""
    needed = ["svp", "vpt-deep", "linear", "full"]
    missing = [m for m in needed if m not in summary]
    if missing:
        return [f"Cannot compare with the paper yet: no common-task results for {', '.join(missing)}."]
    acc = {m: summary[m].accuracy for m in needed}
    gap = 100 * (acc["full"] - acc["svp"])
    share = summary["svp"].params / summary["full"].params
    close = "agrees" if gap <= CLOSE_POINTS else "does NOT agree"
    return [
        title,
        "",
        _compare(acc, "svp", "vpt-deep"),
        _compare(acc, "vpt-deep", "linear"),
        f"- SVP close to full fine-tuning (at most {CLOSE_POINTS:g} point below): {100 * acc['svp']:.1f} vs "
        f"{100 * acc['full']:.1f} ({gap:+.1f} points for full) with {share:.1%} of its trainable parameters "
        f"-> {close} with the paper.",
    ]


def machines_text(last: str, cells: Iterable[Mapping[str, Any]]) -> str:
    """``Machine: LAST.`` when every cell ran there (or none says where it ran); else each machine with its
    cell count, the last run's first, and the cells stored before cells named their machine."""
    counts = Counter(cell.get("machine") or "not recorded" for cell in cells)
    if len(counts) <= 1 and set(counts) <= {last, "not recorded"}:
        return f"Machine: {last}."
    order = sorted(counts, key=lambda m: (m != last, m == "not recorded", m))
    return "Machines, by trials run: " + "; ".join(f"{m} ({counts[m]})" for m in order) + "."


def to_markdown(header: dict[str, Any], table: TransferTable, plot_name: str | None) -> str:
    """The whole ``transfer.md``: headings are bold lines, so that the README can include the file as it is."""
    backbone, protocol = header["backbone"], header["protocol"]
    options = f" {backbone['kwargs']}" if backbone["kwargs"] else ""
    weights = "**random initialisation**"
    if backbone["weights"]:
        weights = f"`{Path(backbone['weights']).name}` (sha256 {backbone['weights_sha256'][:12]}...)"
    lines = [
        f"Written by `{header['command']}` (run from the repository root; it regenerates this file, and the cells "
        "cached in the JSON beside it are not run again).",
        "",
        f"- Backbone: `{backbone['name']}`{options} from {weights}; every run gets a fresh head.",
        f"- Protocol: train on `train800.txt` for {protocol['epochs']} epoch(s) (batch {protocol['batch_size']}, "
        f"AdamW lr {protocol['lr']} ({protocol['full_lr']} for full), weight decay {protocol['weight_decay']}, "
        f"{protocol['warmup_epochs']} warmup epoch(s) then cosine, no augmentation, images resized to the "
        "backbone's input size); validate on `val200.txt` after every epoch; test on `test.txt` once per "
        "protocol. Nothing is selected on test.",
        f"- Data: `{header['data_root']}`. {machines_text(header['machine'], table.cells)}",
        f"- Accuracies in %; `a ± s (n)` = mean ± sample std over n seeds. Means over the tasks every method "
        f"has ({', '.join(table.common_tasks) or 'none'}).",
    ]
    if backbone.get("warning"):
        lines += ["", f"**{backbone['warning']}**"]
    for name, title in PROTOCOL_TITLES.items():
        lines += ["", f"**Test accuracy, {title}**", "", *accuracy_table(table, name)]
    lines += ["", "**Seed spread**", "", *spread_table(table), "", "**Agreement with the SVP paper**", "",
              *agreement(table)]
    if plot_name:
        lines += ["", f"Plot of mean accuracy against trainable parameters: `{plot_name}` beside this file."]
    return "\n".join(lines) + "\n"
