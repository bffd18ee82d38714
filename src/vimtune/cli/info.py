"""``vimtune info``: the model zoo, the selective-scan backends and the CPU linears' path on this machine."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    import torch  # not for --help

    from vimtune.models.zoo_table import zoo_markdown
    from vimtune.ops import available_backends, resolve_backend
    from vimtune.ops.cpu_linear import describe_cpu_matmul

    print(zoo_markdown())
    print()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"selective-scan backends on cpu: {available_backends('cpu')} (default: {resolve_backend('cpu')})")
    print(describe_cpu_matmul())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="print the model zoo, the scan backends and the CPU linears' path")
    parser.set_defaults(func=run)
