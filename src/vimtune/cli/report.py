"""``vimtune report``: (re)write a run folder's self-contained ``report.html``: config, final metrics per
protocol, training curves, confusion matrices and, with ``--images``, the pictures of ``vimtune viz``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vimtune.choices import PROTOCOLS
from vimtune.cli.viz import draw


def run(args: argparse.Namespace) -> int:
    from vimtune.engine.html_report import write_report  # torch: not for --help
    from vimtune.engine.run_dir import RunFiles
    from vimtune.viz.sources import from_run

    files = RunFiles(Path(args.run_dir))
    if not files.config.is_file():
        raise FileNotFoundError(f"'{files.root}' is not a run folder: '{files.config}' is missing")
    if args.images:
        draw(from_run(files.root, args.protocol, args.backbone_weights), args.images, files.viz_dir)
    print(f"wrote {write_report(files)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="write a run's self-contained HTML report (report.html)",
                                   description=__doc__.split(": ", 1)[1])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by train/finetune")
    parser.add_argument("--images", nargs="+", metavar="IMAGE",
                        help="also draw the viz pictures on these image files (into RUN_DIR/viz) and embed them")
    parser.add_argument("--protocol", choices=PROTOCOLS, help="weights the pictures use (default: val, else last)")
    parser.add_argument("--backbone-weights", metavar="PATH",
                        help="the run's backbone, when not where it was recorded (checked by SHA-256)")
    parser.set_defaults(func=run)
