"""``vimtune bench prompt``: SVP's fused prompt update against the same update as plain autograd ops.

One layer's update ``h + beta * silu(inner) + alpha * silu(cross)`` with the cls token kept, at
vim_small's training shape by default (batch 32, 197 tokens, width 384, both paths, float32),
forward + backward (gradients for h, both pre-activations and both scales). The two
implementations take turns, one call each, so load from other work affects them alike; time =
best of ``--repeats`` calls after a warm-up. Writes ``STEM.md`` and ``STEM.json``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vimtune.bench.runner import machine_description, machine_line, write_results
from vimtune.methods.prompt_update import prompt_update, prompt_update_reference

IMPLEMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "plain ops": prompt_update_reference,
    "fused (PromptUpdate)": prompt_update,
}


def _inputs(batch: int, tokens: int, dim: int) -> list[torch.Tensor]:
    """h, pre_inner, beta, pre_cross, alpha, all requiring gradients."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(batch, tokens, dim), (batch, tokens, dim), (dim,), (batch, tokens, dim), (dim,)]
    return [torch.randn(s, generator=gen).requires_grad_() for s in shapes]


def measure(batch: int, tokens: int, dim: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Best forward+backward seconds of each implementation, measured in turns."""
    inputs = _inputs(batch, tokens, dim)
    upstream = torch.randn(batch, tokens, dim)
    keep = tokens // 2  # the cls token of Vim's middle-cls layout

    def call(update: Callable[..., torch.Tensor]) -> float:
        start = time.perf_counter()
        torch.autograd.grad(update(inputs[0], keep, *inputs[1:]), inputs, upstream)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for update in IMPLEMENTATIONS.values():
        call(update)  # warm-up
    for _ in range(repeats):
        for name, update in IMPLEMENTATIONS.items():
            times[name].append(call(update))
    return {name: {"seconds": min(t), "seconds_all": t} for name, t in times.items()}


def to_markdown(results: dict[str, dict[str, Any]], machine: dict[str, Any], command: str,
                shape: tuple[int, int, int]) -> str:
    """The two implementations' times and the speed-up of the fused one."""
    baseline = results["plain ops"]["seconds"]
    lines = [
        f"Machine: {machine_line(machine)}. Command: `{command}`.",
        f"One SVP layer's prompt update, forward + backward, (B, T, D) = {shape}, both paths, float32; "
        "best of the timed calls, implementations in turns.",
        "",
        "| implementation | fwd+bwd ms | speed-up vs plain ops |",
        "|---|---:|---:|",
    ]
    for name, result in results.items():
        lines.append(f"| {name} | {1e3 * result['seconds']:.2f} | {baseline / result['seconds']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vimtune bench prompt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prompt"),
                        help="output stem: writes STEM.<cpu>.md and .json (<cpu>: model and ISA; default %(default)s)")
    args = parser.parse_args(argv)
    machine = machine_description()
    shape = (args.batch, args.tokens, args.dim)
    results = measure(*shape, args.repeats)
    command = ("vimtune bench prompt " + " ".join(argv or [])).strip()
    markdown = to_markdown(results, machine, command, shape)
    write_results(args.out, markdown, machine, command, shape=shape, results=results)
    return 0
