"""``vimtune demo``: fine-tune the committed backbone with SVP and the linear probe on scikit-learn's digits."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """The digits (1797 8x8 images) are upsampled to the backbone's input size; the split is
stratified and fixed by --seed. The default run is sized to finish in under 5 minutes on 2 CPU cores.
If the committed backbone weights are missing, the demo runs on a random backbone and says so loudly.

examples:
  vimtune demo
  vimtune demo --epochs 5 --output-dir runs/demo5
  vimtune demo --methods svp linear lora vpt-deep
  vimtune demo --backbone-weights runs/pretrain_cifar10_micro/weights/last.safetensors
  vimtune demo --results benchmarks/results/demo   # the README's table: demo.<cpu>.md / .json
"""


def run(args: argparse.Namespace) -> int:
    from vimtune.demo import DemoSettings, run_demo
    from vimtune.demo.options import backbone_from_args, protocol_from_args

    defaults = DemoSettings()
    settings = DemoSettings(
        output_dir=args.output_dir, backbone=backbone_from_args(args), methods=args.methods,
        train_size=args.train_size, test_size=args.test_size,
        protocol=protocol_from_args(args, defaults.protocol), seed=args.seed, results=args.results,
    )
    run_demo(settings)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from vimtune.demo import METHOD_VARIANTS, DemoSettings
    from vimtune.demo.options import add_backbone_options, add_protocol_options

    defaults = DemoSettings()
    parser = subparsers.add_parser(
        "demo", help="fine-tune the committed backbone with SVP and the linear probe on digits (< 5 min on CPU)",
        description=__doc__.split(": ", 1)[1], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output-dir", type=Path, default=defaults.output_dir,
                        help=f"the demo's folder, replaced on every demo (default {defaults.output_dir})")
    parser.add_argument("--methods", nargs="+", default=defaults.methods, choices=list(METHOD_VARIANTS),
                        metavar="METHOD", help=f"methods to compare (default {' '.join(defaults.methods)}; "
                                               f"any of {', '.join(METHOD_VARIANTS)})")
    parser.add_argument("--train-size", type=int, default=defaults.train_size,
                        help=f"training images (default {defaults.train_size})")
    parser.add_argument("--test-size", type=int, default=defaults.test_size,
                        help=f"test images (default {defaults.test_size}; train + test <= 1797)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"(default {defaults.seed})")
    parser.add_argument("--results", type=Path, metavar="STEM",
                        help="also write the table with its timings, the machine and its load to STEM.<cpu>.md "
                             "and .json (e.g. benchmarks/results/demo, the file the README shows)")
    add_backbone_options(parser)
    add_protocol_options(parser, defaults.protocol)
    parser.set_defaults(func=run)
