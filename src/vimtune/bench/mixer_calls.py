"""Inputs and calls of the CPU scan kernels (the models' time-major mixer kernels and ``selective_scan``'s),
for the kernel scripts in ``scripts/``.

``scripts/ab_mixer_kernels.py`` times two builds of the kernels on these inputs; ``scripts/scan_in_cache.py``
times one build on them and on copies whose rows all repeat the first one (every read then hits the L1 cache).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import torch

from vimtune.bench.scan import time_steps

STATE = 16  # N, Vim's state size


def scan_inputs(batch: int, length: int, channels: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random time-major scan inputs as the models pass them: x, z and B, C are column slices of wider rows.

    Activations u, delta, z, dout: (batch, length, channels); B, C: (batch, length, STATE); A: (channels,
    STATE); D, delta_bias: (channels,)."""
    g = torch.Generator().manual_seed(0)
    xz = torch.randn(batch, length, 2 * channels, generator=g).to(dtype)
    bc = torch.randn(batch, length, 2 * STATE, generator=g).to(dtype)
    return {
        "u": xz[..., :channels], "delta": (torch.randn(batch, length, channels, generator=g) * 0.5 - 1).to(dtype),
        "A": -torch.rand(channels, STATE, generator=g) * 4 - 0.5, "B": bc[..., :STATE], "C": bc[..., STATE:],
        "D": torch.randn(channels, generator=g), "z": xz[..., channels:],
        "delta_bias": torch.randn(channels, generator=g) * 0.1,
        "dout": torch.randn(batch, length, channels, generator=g).to(dtype),
    }


def repeat_first_row(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``inputs`` with every (batch, time) row of the activations replaced by the first one, as a stride-0
    view: the same shapes and unit stride over the last dimension, but the kernels read one row over and over."""
    return {name: t[:1, :1].expand_as(t) if t.dim() == 3 else t for name, t in inputs.items()}


def selective_scan_calls(ops: object, x: dict[str, torch.Tensor]) -> dict[str, Callable[[], object]]:
    """The forward and the forward + backward of :func:`vimtune.ops.scan_cpu.selective_scan_cpu` (softplus on)
    on the kernels ``ops`` (another build's ``torch.ops`` namespace of ``selective_scan_cpu.cpp``), on inputs ``x``
    of :func:`scan_inputs` moved to its (B, E, L) and (B, N, L) layout; float32 only.

    The wrapper finds its kernels through ``vimtune.ops.scan_cpu._ops``, which each call points at ``ops`` for
    its duration (the only way to run the wrapper's allocation and autograd code on another build), with the
    wrapper's cached kernel layout (W, T) read anew from ``ops``, so that builds of other layouts compare too."""
    from vimtune.ops import scan_cpu

    channel_major = {name: x[name].transpose(1, 2).contiguous().float() for name in ("u", "delta", "z", "B", "C")}
    leaves = {**channel_major, "A": x["A"], "D": x["D"], "delta_bias": x["delta_bias"]}
    dout = x["dout"].transpose(1, 2).contiguous().float()

    def run(grad: bool) -> object:
        own = scan_cpu._ops
        scan_cpu._ops = lambda: ops
        scan_cpu._layout.cache_clear()
        try:
            inputs = {name: t.detach().requires_grad_(grad) for name, t in leaves.items()}
            with torch.set_grad_enabled(grad):
                out = scan_cpu.selective_scan_cpu(inputs["u"], inputs["delta"], inputs["A"], inputs["B"],
                                                  inputs["C"], inputs["D"], inputs["z"], inputs["delta_bias"], True)
            return torch.autograd.grad(out, tuple(inputs.values()), dout) if grad else out
        finally:
            scan_cpu._ops = own
            scan_cpu._layout.cache_clear()

    return {"forward": lambda: run(False), "fwd+bwd": lambda: run(True)}


def calls(ops: object, x: dict[str, torch.Tensor]) -> dict[str, Callable[[], object]]:
    """The forward and backward kernel calls of ``ops`` on inputs ``x`` (forward direction, softplus on), as
    the autograd wrapper makes them: on builds that keep the states before the backward's chunks
    (those with ``chunk_states_shape``) and a sequence of more than one chunk, the forward
    keeps them and the backward reads them (filled by one forward call here, before any timing)."""
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True, False)
    kept = None
    if hasattr(ops, "chunk_states_shape"):
        shape = ops.chunk_states_shape(*x["u"].shape, x["A"].shape[1])
        kept = x["A"].new_empty(shape) if shape[2] > 1 else None
    if kept is None:
        return {"forward": lambda: ops.scan_fwd(*args, None),
                "backward": lambda: ops.scan_bwd(*args, x["dout"], True)}
    ops.scan_fwd(*args, None, kept)
    return {"forward": lambda: ops.scan_fwd(*args, None, kept),
            "backward": lambda: ops.scan_bwd(*args, x["dout"], True, chunk_states=kept)}


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both kernel scripts share: shapes, dtypes, threads and the timing budget."""
    parser.add_argument("--shapes", nargs="+", default=["8,197,384"], help="B,T,E per shape (N = 16)")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per kernel, at least")
    parser.add_argument("--budget-s", type=float, default=5.0, help="time per kernel and mode, at most")


def timing_options(args: argparse.Namespace) -> str:
    """The options of :func:`add_timing_arguments` as they would be typed, for a results file's command line."""
    return (f"--shapes {' '.join(args.shapes)} --dtypes {' '.join(args.dtypes)} --threads {args.threads} "
            f"--repeats {args.repeats} --budget-s {args.budget_s:g}")


def cases(args: argparse.Namespace) -> Iterator[tuple[str, str, dict[str, torch.Tensor]]]:
    """For every ``--shapes`` x ``--dtypes`` pair: the shape as a table cell "(B, T, E, N)", the dtype's name
    and :func:`scan_inputs` of that shape and dtype."""
    for shape in args.shapes:
        batch, length, channels = (int(v) for v in shape.split(","))
        for dtype_name in args.dtypes:
            inputs = scan_inputs(batch, length, channels, getattr(torch, dtype_name))
            yield f"({batch}, {length}, {channels}, {STATE})", dtype_name, inputs


def side_by_side_ms(first: dict[str, Callable[[], object]], second: dict[str, Callable[[], object]],
                    args: argparse.Namespace) -> Iterator[tuple[str, float, float]]:
    """For each mode of two :func:`calls` (or :func:`selective_scan_calls`), in order: the mode and each one's
    best time in ms, the two timed in turn (:func:`vimtune.bench.scan.time_steps`, ``--repeats`` and
    ``--budget-s``)."""
    for mode in first:
        times = time_steps({"first": first[mode], "second": second[mode]}, args.repeats, args.budget_s)
        yield mode, times["first"]["seconds"] * 1e3, times["second"]["seconds"] * 1e3
