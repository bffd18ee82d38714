"""``vimtune bench transfer``: every fine-tuning method on every vtab-mini task, from the committed backbone.

One protocol for all (see :class:`vimtune.demo.Protocol`): train on ``train800``, validate on
``val200`` after every epoch, test at the end under protocols ``val`` and ``last``. Seed 0 for the
grid (``--seeds``), then SVP and the best baseline (by val accuracy) with ``--spread-seeds`` on
``--spread-tasks``. Finished cells are cached in ``OUT.json``, so an interrupted run resumes;
``OUT.md`` and ``OUT.png`` are rewritten from all cached cells at the end.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from vimtune.bench.runner import machine_description, machine_line
from vimtune.bench.transfer.grid import Grid, ResultsFile, discover_tasks, fingerprint
from vimtune.bench.transfer.report import TransferTable, to_markdown
from vimtune.demo import METHOD_VARIANTS, Protocol, check_methods, resolve_backbone
from vimtune.demo.options import add_backbone_options, add_protocol_options, backbone_from_args, protocol_from_args
from vimtune.viz import plot_accuracy_vs_params

DEFAULT_PROTOCOL = Protocol(epochs=8, batch_size=32, lr=1e-3, full_lr=1e-4, warmup_epochs=1)
DEFAULT_DATA_ROOT = Path("../shared/data/vtab-mini")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``vimtune bench transfer``."""
    parser = argparse.ArgumentParser(prog="vimtune bench transfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                        help=f"folder of VTAB-layout tasks (default {DEFAULT_DATA_ROOT})")
    parser.add_argument("--tasks", nargs="+", help="task folder names (default: every task in --data-root)")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_VARIANTS), metavar="METHOD",
                        help=f"(default all: {', '.join(METHOD_VARIANTS)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the whole grid (default 0)")
    parser.add_argument("--spread-seeds", nargs="*", type=int, default=[0, 1, 2],
                        help="seeds of the spread runs (default 0 1 2; none to skip them)")
    parser.add_argument("--spread-tasks", nargs="+", help="tasks of the spread runs (default: the first task)")
    parser.add_argument("--spread-methods", nargs="+", default=["svp", "best"], metavar="METHOD",
                        help="methods of the spread runs; 'best' = the baseline with the best val accuracy "
                             "(default svp best)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/transfer"),
                        help="output stem: STEM.json (cache), STEM.md, STEM.png (default %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/transfer"),
                        help="engine run folders of the cells (default %(default)s)")
    parser.add_argument("--fresh", action="store_true",
                        help="drop the cached cells of OUT.json (required when protocol or backbone changed)")
    add_backbone_options(parser)
    add_protocol_options(parser, DEFAULT_PROTOCOL)
    return parser


def write_outputs(results: ResultsFile) -> Path:
    """``STEM.md`` and ``STEM.png`` from every cached cell; returns the markdown's path."""
    table = TransferTable(list(results.cells.values()))
    summary = table.summary("val")
    png = results.path.with_suffix(".png")
    if summary:
        plot_accuracy_vs_params(
            [(s.method, s.params, s.accuracy) for s in summary], png,
            title=f"{results.header['backbone']['name']}: mean test accuracy over {len(table.common_tasks)} "
                  "task(s), epoch selected on val",
            per_task={t: [(table.params(t, s.method), s.per_task[t]) for s in summary] for t in table.common_tasks},
        )
    markdown = results.path.with_suffix(".md")
    markdown.write_text(to_markdown(results.header, table, png.name if summary else None), encoding="utf-8")
    return markdown


def main(argv: list[str] | None = None) -> int:
    """Run the grid (cached cells skipped), then the spread runs; write STEM.md / .png; returns 0."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    methods = check_methods(args.methods)
    spread_methods = [m for m in args.spread_methods if m != "best"]
    check_methods(spread_methods)
    backbone = resolve_backbone(backbone_from_args(args))
    protocol = protocol_from_args(args, DEFAULT_PROTOCOL)
    tasks = args.tasks or discover_tasks(args.data_root)
    header = {
        "fingerprint": fingerprint(protocol, backbone),
        "command": shlex.join(["vimtune", "bench", "transfer", *argv]),
        "protocol": protocol.identity(),
        "backbone": backbone.describe(),
        "data_root": str(args.data_root),
        "machine": machine_line(machine_description()),
    }
    results = ResultsFile.open(args.out.with_suffix(".json"), header, args.fresh)
    if backbone.warning:
        print(backbone.warning)
    grid = Grid(args.data_root, args.work_dir, protocol, backbone, results)
    grid.run((t, m, s) for t in tasks for m in methods for s in args.seeds)
    if args.spread_seeds:
        if "best" in args.spread_methods:
            best = TransferTable(list(results.cells.values())).best_baseline()
            print(f"best baseline by val accuracy: {best}")
            spread_methods += [best] if best else []
        spread_tasks = args.spread_tasks or tasks[:1]
        grid.run((t, m, s) for t in spread_tasks for m in spread_methods for s in args.spread_seeds)
    results.save()  # the header of this invocation (command, machine), also when every cell was cached
    markdown = write_outputs(results)
    print(markdown.read_text(encoding="utf-8"))
    return 0
