"""``vimtune methods``: a markdown table of what each fine-tuning method trains on a model."""

from __future__ import annotations

import argparse
from typing import Any


def _format_options(options: dict[str, Any]) -> str:
    """``rank=64, targets=in_proj,out_proj`` (sequences comma-joined); ``-`` for none."""
    parts = [f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in options.items()]
    return ", ".join(parts) or "-"


def method_rows(model_name: str, num_classes: int | None, names: list[str]) -> list[dict[str, Any]]:
    """Per method (default options): trainable parameters, their share, and those outside the head.

    Models are built on the ``meta`` device, so no memory is spent on weights.
    """
    import timm  # here, not at the top: ``vimtune methods --help`` does not import torch
    import torch

    import vimtune.models  # noqa: F401 - registers the model names with timm
    from vimtune.methods import build

    rows = []
    for name in names:
        method = build(name)
        with torch.device("meta"):
            kwargs = {} if num_classes is None else {"num_classes": num_classes}
            model = method.attach(timm.create_model(model_name, **kwargs), num_classes)
        counts = method.describe(model)
        head = sum(p.numel() for n, p in method.trainable_parameters(model) if n.startswith("head."))
        rows.append({"method": name, "options": method.to_config()["options"], "head": head, **counts})
    return rows


def methods_markdown(model_name: str, num_classes: int | None, names: list[str]) -> str:
    """:func:`method_rows` as a markdown table."""
    lines = [
        "| method | options | trainable params | share of all | without head | total params |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in method_rows(model_name, num_classes, names):
        lines.append(
            f"| `{row['method']}` | {_format_options(row['options'])} | {row['trainable']:,} | "
            f"{100 * row['share']:.2f}% | {row['trainable'] - row['head']:,} | {row['total']:,} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from vimtune.methods import available_methods

    names = args.methods or available_methods()
    classes = "its default head" if args.num_classes is None else f"{args.num_classes} classes"
    print(f"Trainable parameters of each method (default options) on `{args.model}`, {classes}:\n")
    print(methods_markdown(args.model, args.num_classes, names))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("methods", help="table of each fine-tuning method's trainable parameters")
    parser.add_argument("--model", default="vim_small_patch16_224", help="timm name of the backbone config")
    parser.add_argument("--num-classes", type=int, default=None, help="classes of the head (default: the model's)")
    parser.add_argument("--methods", nargs="+", metavar="NAME",
                        help="methods to list, compositions allowed (default: every method)")
    parser.set_defaults(func=run)
