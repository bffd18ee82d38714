"""The ``vimtune`` command: each module in this package adds one sub-command.

A sub-command module defines ``register(subparsers) -> None``, which adds its parser and sets
``func=<callable(args) -> int | None>`` as the parser default. Modules are found automatically.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from vimtune import __version__
from vimtune.allocator import keep_freed_memory
from vimtune.cli._errors import USER_ERRORS, one_line


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command of this package registered."""
    parser = argparse.ArgumentParser(
        prog="vimtune",
        description="Vision Mamba backbones and their parameter-efficient fine-tuning (SVP and baselines).",
    )
    parser.add_argument("--version", action="version", version=f"vimtune {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vimtune`` console script; returns the exit status."""
    parser = build_parser()
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
