"""``vimtune finetune``: adapt a pretrained backbone with a PEFT method (SVP, linear probe, ...)."""

from __future__ import annotations

import argparse

from vimtune.cli._run_options import add_run_options, train_from_args

EPILOG = """examples:
  vimtune finetune --config svp_vtab --backbone-weights vim_s.pth --data vtab-1k/cifar
  vimtune finetune --method svp --model vim_small_patch16_224 --backbone-weights vim_s.pth \\
      --data-kind vtab --data vtab-1k/cifar --epochs 100
  vimtune finetune --output-dir runs/svp-cifar --resume      # continue a stopped run
  torchrun --nproc_per_node=2 -m vimtune finetune --config svp_fgvc ...
"""


def run(args: argparse.Namespace) -> int:
    return train_from_args(args, finetune=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a pretrained backbone with a PEFT method", epilog=EPILOG,
        description=__doc__.split(": ", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_options(parser, finetune=True)
    parser.set_defaults(func=run)
