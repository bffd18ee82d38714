"""Command-line options shared by ``vimtune demo`` and ``vimtune bench transfer``.

Imports nothing heavy (their ``--help`` does not import torch); the engine's override parser is
imported when the options are read.
"""

from __future__ import annotations

import argparse
import dataclasses

from vimtune.demo.backbone_spec import DEFAULT_BACKBONE, BackboneSpec
from vimtune.demo.protocol_spec import Protocol


def add_backbone_options(parser: argparse.ArgumentParser) -> None:
    """``--backbone``, ``--backbone-weights``, ``--no-pretrained``, ``--backbone-kwarg``."""
    group = parser.add_argument_group("backbone")
    group.add_argument("--backbone", default=DEFAULT_BACKBONE,
                       help=f"timm model name (default {DEFAULT_BACKBONE}, with its committed weights)")
    group.add_argument("--backbone-weights", metavar="PATH",
                       help="start from this weights file instead of the committed weights")
    group.add_argument("--no-pretrained", action="store_true",
                       help="start from a randomly initialised backbone (for tests and timing only)")
    group.add_argument("--backbone-kwarg", dest="backbone_kwargs", action="append", default=[], metavar="KEY=VALUE",
                       help="model constructor override, YAML value (e.g. depth=2); repeatable")


def backbone_from_args(args: argparse.Namespace) -> BackboneSpec:
    """The :class:`BackboneSpec` of the parsed backbone options."""
    from vimtune.engine import parse_override

    return BackboneSpec(name=args.backbone, kwargs=dict(parse_override(t) for t in args.backbone_kwargs),
                        weights=args.backbone_weights, pretrained=not args.no_pretrained)


def add_protocol_options(parser: argparse.ArgumentParser, defaults: Protocol) -> None:
    """Training options whose defaults are those of ``defaults``."""
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=defaults.epochs, help=f"(default {defaults.epochs})")
    group.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"(default {defaults.batch_size})")
    group.add_argument("--lr", type=float, default=defaults.lr,
                       help=f"learning rate of every method but full (default {defaults.lr})")
    group.add_argument("--full-lr", type=float, default=defaults.full_lr,
                       help=f"learning rate of full fine-tuning (default {defaults.full_lr})")
    group.add_argument("--warmup-epochs", type=int, default=defaults.warmup_epochs,
                       help=f"(default {defaults.warmup_epochs})")
    group.add_argument("--device", default=defaults.device, help=f"auto, cpu or cuda (default {defaults.device})")


def protocol_from_args(args: argparse.Namespace, defaults: Protocol) -> Protocol:
    """``defaults`` with the parsed training options."""
    return dataclasses.replace(defaults, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               full_lr=args.full_lr, warmup_epochs=args.warmup_epochs, device=args.device)
