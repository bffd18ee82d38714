"""The ``vimtune`` command: each module in this package adds one sub-command.

A sub-command module defines ``register(subparsers) -> None``, which adds its parser and sets
``func=<callable(args) -> int | None>`` as the parser default. Modules are found automatically.
Only the module of the sub-command being run is imported; the others appear in the top-level
help with the summary of their module docstring (read without importing them), so that
``vimtune --help`` and ``vimtune --version`` do not import torch.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import pkgutil
import sys
from collections.abc import Iterable
from pathlib import Path

from vimtune import __version__
from vimtune.allocator import keep_freed_memory
from vimtune.cli._errors import USER_ERRORS, one_line


def command_names() -> list[str]:
    """The sub-commands: the public modules of this package."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


def command_summary(name: str) -> str:
    """The summary in ``name``'s module docstring (the text after ``"``vimtune NAME``: "``), read without importing."""
    doc = ast.get_docstring(ast.parse((Path(__path__[0]) / f"{name}.py").read_text())) or ""
    return doc.splitlines()[0].split(": ", 1)[-1].rstrip(".") if doc else ""


def build_parser(full: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser; the sub-commands in ``full`` (default: all) are registered with all options."""
    parser = argparse.ArgumentParser(
        prog="vimtune",
        description="Vision Mamba backbones and their parameter-efficient fine-tuning (SVP and baselines).",
    )
    parser.add_argument("--version", action="version", version=f"vimtune {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = command_names()
    full = set(names if full is None else full)
    for name in names:
        if name in full:
            importlib.import_module(f"{__name__}.{name}").register(subparsers)
        else:
            subparsers.add_parser(name, help=command_summary(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vimtune`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(full=[command] if command in command_names() else [])
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    keep_freed_memory()
    try:
        status = args.func(args)
    except USER_ERRORS as err:
        print(f"vimtune {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C: one line (a run's names its last checkpoint), no traceback
        print(f"vimtune {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
