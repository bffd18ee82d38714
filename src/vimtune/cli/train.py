"""``vimtune train``: train a Vim backbone from scratch (every parameter)."""

from __future__ import annotations

import argparse

from vimtune.cli._run_options import add_run_options, train_from_args

EPILOG = """examples:
  vimtune train --config pretrain_cifar10_micro --data /data/cifar10
  vimtune train --model vim_micro_patch4_32 --data-kind imagefolder --data ROOT --epochs 100
  vimtune train --output-dir runs/pretrain --resume          # continue a stopped run
  torchrun --nproc_per_node=4 -m vimtune train --config ...  # DDP; --batch-size is per process
"""


def run(args: argparse.Namespace) -> int:
    return train_from_args(args, finetune=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a backbone from scratch", epilog=EPILOG,
        description=__doc__.split(": ", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_options(parser, finetune=False)
    parser.set_defaults(func=run)
