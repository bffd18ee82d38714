"""``vimtune bench transfer``: every fine-tuning method on every vtab-mini task, from the committed backbone.

Two protocols (``--protocol``):

- ``one-lr`` (the fast default; see :class:`vimtune.demo.Protocol`): one learning rate for all
  methods (``--lr``, ``--full-lr``), train on ``train800``, validate on ``val200`` after every
  epoch, test at the end under protocols ``val`` and ``last``. Seed 0 for the grid (``--seeds``),
  then SVP and the best baseline (by val accuracy) with ``--spread-seeds`` on ``--spread-tasks``.
- ``vtab`` (VTAB-1k's own, hours on a CPU; see :mod:`vimtune.bench.transfer.vtab`): per task and
  method, learning rate (``--lr-factors`` x the method's default) x ``--grid-epochs`` trained on
  ``train800`` and scored on ``val200``; the best cell retrained on ``train800val200`` and tested
  once; SVP and the best baseline also with ``--spread-seeds``.

Finished cells are cached in ``OUT.json``, so an interrupted run resumes; ``OUT.md`` and ``OUT.png``
are rewritten from all cached cells at the end. Several processes may share one ``OUT``: each
cell is claimed with an OS lock, so none runs twice.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# only torch-free modules here, so that --help does not import torch; each run imports the rest
from vimtune.demo.options import add_backbone_options, add_protocol_options, backbone_from_args, protocol_from_args
from vimtune.demo.protocol_spec import METHOD_VARIANTS, Protocol, check_methods

if TYPE_CHECKING:
    from vimtune.bench.transfer.grid import ResultsFile

DEFAULT_PROTOCOL = Protocol(epochs=8, batch_size=32, lr=1e-3, full_lr=1e-4, warmup_epochs=1)
DEFAULT_DATA_ROOT = Path("../shared/data/vtab-mini")
#: The methods of ``--protocol vtab`` by default, in running order (SVP and its references first).
VTAB_METHODS = ["svp", "full", "lora", "linear", "vpt-deep", "bias", "adapter"]
#: Options of the one-lr protocol only (refused with ``--protocol vtab``).
ONE_LR_ONLY = ("--epochs", "--lr", "--full-lr", "--spread-tasks", "--spread-methods")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``vimtune bench transfer``."""
    parser = argparse.ArgumentParser(prog="vimtune bench transfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=["one-lr", "vtab"], default="one-lr",
                        help="one-lr: one learning rate for all methods, fast (default); vtab: VTAB-1k's "
                             "protocol, hyper-parameters chosen on val200, retrained on train800val200 (hours)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                        help=f"folder of VTAB-layout tasks (default {DEFAULT_DATA_ROOT})")
    parser.add_argument("--tasks", nargs="+", help="task folder names (default: every task in --data-root)")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help=f"(default one-lr: all, {', '.join(METHOD_VARIANTS)}; vtab: {' '.join(VTAB_METHODS)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the whole grid (default 0)")
    parser.add_argument("--spread-seeds", nargs="*", type=int, default=[0, 1, 2],
                        help="seeds of the spread runs (default 0 1 2; none to skip them)")
    parser.add_argument("--spread-tasks", nargs="+", help="tasks of the spread runs (default: the first task)")
    parser.add_argument("--spread-methods", nargs="+", default=["svp", "best"], metavar="METHOD",
                        help="methods of the spread runs; 'best' = the baseline with the best val accuracy "
                             "(default svp best)")
    parser.add_argument("--out", type=Path,
                        help="output stem: STEM.json (cache), STEM.md, STEM.png (default "
                             "benchmarks/results/transfer, or transfer_vtab with --protocol vtab)")
    vtab = parser.add_argument_group("protocol vtab")
    vtab.add_argument("--lr-factors", nargs="+", type=float, default=[1 / 3, 1.0, 3.0], metavar="F",
                      help="learning rates of the grid, as multiples of each method's default (default 1/3 1 3)")
    vtab.add_argument("--grid-epochs", nargs="+", type=int, default=[10, 20], metavar="E",
                      help="epoch counts of the grid, each a run of its own (default 10 20)")
    vtab.add_argument("--edge-steps", type=int, default=2, metavar="N",
                      help="when the best cell is on the grid's highest (lowest) rate, add the next rate in that "
                           "direction, at most N times (default 2; 0 keeps the grid fixed)")
    vtab.add_argument("--report-only", action="store_true",
                      help="write STEM.md / STEM.png from the trials cached so far and run nothing (e.g. while "
                           "another process is still running the plan)")
    vtab.add_argument("--compare", type=Path, default=Path("benchmarks/results/transfer.json"),
                      help="one-lr results to compare with (default %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/transfer"),
                        help="engine run folders of the cells (default %(default)s)")
    parser.add_argument("--fresh", action="store_true",
                        help="drop the cached cells of OUT.json (required when protocol or backbone changed)")
    add_backbone_options(parser)
    add_protocol_options(parser, DEFAULT_PROTOCOL)
    return parser


def write_outputs(results: ResultsFile) -> Path:
    """``STEM.md`` and ``STEM.png`` from every cached cell; returns the markdown's path."""
    from vimtune.bench.transfer.report import TransferTable, to_markdown
    from vimtune.viz import plot_accuracy_vs_params

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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.protocol == "vtab":
        given = [flag for flag in ONE_LR_ONLY if any(a == flag or a.startswith(flag + "=") for a in argv)]
        if given:
            parser.error(f"{', '.join(given)}: options of --protocol one-lr, not of vtab")
        return main_vtab(args, argv)
    from vimtune.bench.runner import machine_description, machine_line
    from vimtune.bench.transfer.grid import Grid, ResultsFile, discover_tasks, fingerprint
    from vimtune.bench.transfer.report import TransferTable
    from vimtune.demo.backbone import resolve_backbone

    print("protocol one-lr (the fast default; --protocol vtab runs VTAB-1k's protocol)")
    methods = check_methods(args.methods or list(METHOD_VARIANTS))
    spread_methods = [m for m in args.spread_methods if m != "best"]
    check_methods(spread_methods)
    backbone = resolve_backbone(backbone_from_args(args))
    protocol = protocol_from_args(args, DEFAULT_PROTOCOL)
    tasks = args.tasks or discover_tasks(args.data_root)
    header = {
        "fingerprint": fingerprint(protocol.identity(), backbone),
        "command": shlex.join(["vimtune", "bench", "transfer", *argv]),
        "protocol": protocol.identity(),
        "backbone": backbone.describe(),
        "data_root": str(args.data_root),
        "machine": machine_line(machine_description()),
    }
    results = ResultsFile.open((args.out or Path("benchmarks/results/transfer")).with_suffix(".json"), header,
                               args.fresh)
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


def main_vtab(args: argparse.Namespace, argv: list[str]) -> int:
    """``--protocol vtab``: run the plan (cached trials skipped), write STEM.md / .png; returns 0."""
    from vimtune.bench.runner import machine_description, machine_line
    from vimtune.bench.transfer.grid import ResultsFile, discover_tasks, fingerprint
    from vimtune.bench.transfer.report import TransferTable
    from vimtune.bench.transfer.vtab import VtabPlan, run_plan
    from vimtune.bench.transfer.vtab_engine import EngineTrainer
    from vimtune.bench.transfer.vtab_report import write_vtab_outputs
    from vimtune.demo.backbone import resolve_backbone
    from vimtune.methods.defaults import METHOD_DEFAULTS, method_defaults

    methods = check_methods(args.methods or VTAB_METHODS)
    backbone = resolve_backbone(backbone_from_args(args))
    seed = args.seeds[0]
    plan = VtabPlan(tasks=args.tasks or discover_tasks(args.data_root), methods=methods,
                    lr_factors=tuple(args.lr_factors), epochs=tuple(args.grid_epochs), seed=seed,
                    spread_seeds=tuple(s for s in args.spread_seeds if s != seed), edge_steps=args.edge_steps)
    trainer_settings = {"batch_size": args.batch_size, "warmup_epochs": args.warmup_epochs}
    identity = {"name": "vtab", "lr_factors": plan.lr_factors, "epochs": plan.epochs, "seed": seed,
                **trainer_settings, "defaults": {m: method_defaults(m).optim() for m in METHOD_DEFAULTS}}
    header = {
        "fingerprint": fingerprint(identity, backbone),
        "command": shlex.join(["vimtune", "bench", "transfer", *argv]),
        "protocol": identity,
        "trainer": trainer_settings,
        # outside the fingerprint: a cell's result does not depend on how far the grid grows
        "edge_steps": plan.edge_steps,
        "backbone": backbone.describe(),
        "data_root": str(args.data_root),
        "machine": machine_line(machine_description()),
    }
    stem = args.out or Path("benchmarks/results/transfer_vtab")
    results = ResultsFile.open(stem.with_suffix(".json"), header, args.fresh)
    print(f"protocol vtab: {len(plan.tasks)} task(s) x {len(methods)} method(s), grid {len(plan.lr_factors)} "
          f"rate(s) x {len(plan.epochs)} epoch count(s); results in {results.path}")
    if backbone.warning:
        print(backbone.warning)
    trainer = EngineTrainer(args.data_root, args.work_dir / header["fingerprint"], backbone, args.batch_size,
                            args.warmup_epochs, args.device)
    if args.report_only:  # the file's own header: the command and machine of the run that wrote it
        header = {**header, **{k: v for k, v in json.loads(results.path.read_text(encoding="utf-8")).items()
                               if k != "cells"}} if results.path.is_file() else header
    else:
        run_plan(plan, trainer, results)
        results.save()
    one_lr = None
    if args.compare.is_file():
        one_lr = TransferTable(list(json.loads(args.compare.read_text(encoding="utf-8"))["cells"].values()))
    markdown = write_vtab_outputs(header, plan, results.cells, stem, one_lr)
    print(markdown.read_text(encoding="utf-8"))
    return 0
