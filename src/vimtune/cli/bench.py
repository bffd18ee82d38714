"""``vimtune bench NAME [options]``: runs the benchmark module ``vimtune.bench.NAME``.

Each benchmark module defines ``main(argv: list[str] | None) -> int`` with its own options
(``vimtune bench NAME --help`` lists them).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def _module_names() -> list[str]:
    """The public modules of :mod:`vimtune.bench`, found without importing them."""
    import vimtune.bench

    return sorted(m.name for m in pkgutil.iter_modules(vimtune.bench.__path__) if not m.name.startswith("_"))


def _benchmark_names() -> list[str]:
    """The modules of :mod:`vimtune.bench` that define ``main(argv)`` (helpers such as ``runner`` do not)."""
    return [name for name in _module_names() if hasattr(importlib.import_module(f"vimtune.bench.{name}"), "main")]


def run(args: argparse.Namespace) -> int:
    # only the named module is imported (NAME --help of a torch-free parser stays fast); all only to list them
    module = importlib.import_module(f"vimtune.bench.{args.name}") if args.name in _module_names() else None
    if not hasattr(module, "main"):
        raise ValueError(f"unknown benchmark {args.name!r}; available: {', '.join(_benchmark_names())}")
    from vimtune.bench.source import run_source

    run_source()  # the commit the result files record: as it is now, when the benchmark starts
    return int(module.main(args.options) or 0)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="run a benchmark (scan, resolution, methods, transfer, ...)",
        description="Run a benchmark; options after NAME go to the benchmark itself (NAME --help).",
    )
    parser.add_argument("name", help="benchmark name, e.g. scan")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of that benchmark")
    parser.set_defaults(func=run)
