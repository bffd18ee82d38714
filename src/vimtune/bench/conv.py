"""``vimtune bench conv``: the C++ causal conv + SiLU kernel against a memory floor and the torch reference.

At Vim shapes (the mixer's (B, T, E) activations, kernel size 4), forward and backward, float32 and
bfloat16 activations. Each mode times, in turn (the round-robin of :func:`vimtune.bench.scan.time_steps`,
best call after a warm-up, so that load from other work hits all of them alike):

- ``kernel``: the C++ kernel alone (``conv_fwd``; ``conv_bwd`` with the weight and bias gradients);
- ``floor``: the least memory traffic of the same call, as torch elementwise ops over the same bytes on the
  same threads: forward ``out.copy_(x)`` (read x, write u), backward ``torch.add(x, dout, out=dx)`` (read x
  and dout, write dx). ``x floor`` = kernel / floor; 1.0 would mean the kernel costs no more than moving its data;
- ``reference``: ``silu(conv1d(...))`` on the time-major tensor (transposed views, as the mixer's generic
  path does), forward under ``no_grad``, backward ``torch.autograd.grad`` of x, weight and bias (its time
  includes the forward that autograd needs). ``ref / kernel`` = how much faster the kernel is.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vimtune.bench.runner import bench_command, load_text, machine_line, machine_with_load, write_results
from vimtune.bench.scan import time_steps

SHAPES = {  # name -> (batch, T, E)
    "tiny": (1, 20, 16),  # smoke runs
    "tiny-224": (8, 197, 384),
    "small-224": (8, 197, 768),
    "small-224-b32": (32, 197, 768),
    "tiny-1248": (1, 6085, 384),
}
DEFAULT_SHAPES = ["tiny-224", "small-224", "tiny-1248"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODES = ("forward", "backward")
TAPS = 4


def make_inputs(shape: tuple[int, int, int], dtype: torch.dtype, seed: int = 0) -> dict[str, Tensor]:
    """x and dout (B, T, E) in ``dtype``; weight (E, K) and bias (E,) in float32."""
    batch, length, channels = shape
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(batch, length, channels, generator=g).to(dtype),
            "dout": torch.randn(batch, length, channels, generator=g).to(dtype),
            "weight": torch.randn(channels, TAPS, generator=g) * 0.5,
            "bias": torch.randn(channels, generator=g)}


def reference(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """silu of the causal depthwise conv of x (B, T, E) along T, through torch's conv1d (in x's dtype)."""
    channels, taps = weight.shape
    out = F.conv1d(x.transpose(1, 2), weight.view(channels, 1, taps).to(x.dtype), bias.to(x.dtype),
                   padding=taps - 1, groups=channels)
    return F.silu(out[..., : x.shape[1]]).transpose(1, 2)


def steps(inputs: dict[str, Tensor], mode: str) -> dict[str, Callable[[], None]]:
    """The zero-argument calls timed for one mode: ``kernel``, ``floor`` and ``reference``."""
    from vimtune.ops import mixer_cpu

    ops = mixer_cpu._ops()
    x, dout, weight, bias = inputs["x"], inputs["dout"], inputs["weight"], inputs["bias"]
    out = torch.empty_like(x)
    if mode == "forward":
        def reference_forward() -> None:
            with torch.no_grad():
                reference(x, weight, bias)

        return {"kernel": lambda: ops.conv_fwd(x, weight, bias, False), "floor": lambda: out.copy_(x),
                "reference": reference_forward}
    leaves = [x.detach().requires_grad_(), weight.detach().requires_grad_(), bias.detach().requires_grad_()]

    def reference_backward() -> None:
        torch.autograd.grad(reference(*leaves), leaves, dout)

    return {"kernel": lambda: ops.conv_bwd(x, weight, bias, False, dout, True),
            "floor": lambda: torch.add(x, dout, out=out), "reference": reference_backward}


def run_conv_benchmark(shape_names: list[str], dtype_names: list[str], repeats: int, budget_s: float
                       ) -> list[dict[str, Any]]:
    """One row per (shape, dtype, mode): the best seconds of ``kernel``, ``floor`` and ``reference``."""
    rows = []
    for shape_name in shape_names:
        for dtype_name in dtype_names:
            inputs = make_inputs(SHAPES[shape_name], DTYPES[dtype_name])
            for mode in MODES:
                timed = time_steps(steps(inputs, mode), repeats, budget_s)
                row = {"shape": shape_name, "dtype": dtype_name, "mode": mode,
                       **{name: result["seconds"] for name, result in timed.items()}}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def to_markdown(rows: list[dict[str, Any]], machine: dict[str, Any], command: str) -> str:
    """Times in ms with kernel / floor and reference / kernel, one line per shape, dtype and mode."""
    lines = [
        f"Machine: {machine_line(machine)}; {load_text(machine)}; other work slows every column alike, the "
        "ratios are side by side.",
        f"Command: `{command}`. Times in ms, best of the repeats, taken in turn. `floor` = torch elementwise "
        "op over the same bytes (forward: copy x; backward: x + dout); `x floor` = kernel / floor; "
        "`ref / kernel` = torch conv1d + silu (backward: autograd, with its forward) / kernel.",
        "",
        "| shape (B, T, E) | dtype | mode | kernel ms | floor ms | x floor | reference ms | ref / kernel |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['shape']} {SHAPES[r['shape']]} | {r['dtype']} | {r['mode']} | {r['kernel'] * 1e3:.2f} | "
                     f"{r['floor'] * 1e3:.2f} | {r['kernel'] / r['floor']:.1f} | {r['reference'] * 1e3:.2f} | "
                     f"{r['reference'] / r['kernel']:.1f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The options of ``vimtune bench conv``."""
    parser = argparse.ArgumentParser(prog="vimtune bench conv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, choices=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=5.0, help="stop repeating a measurement after this")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/conv"),
                        help="output stem: writes STEM.<cpu>.md and .json (<cpu>: model and ISA)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from vimtune.ops.mixer_cpu import mixer_kernels_available

    if not mixer_kernels_available():
        parser.error("the C++ mixer kernels could not be built on this machine (see the warning above)")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = run_conv_benchmark(args.shapes, args.dtypes, args.repeats, args.budget_s)
    machine = machine_with_load(load_before)
    command = bench_command("conv", argv)
    write_results(args.out, to_markdown(rows, machine, command), machine, command, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
