"""``vimtune bench scan``: the selective-scan backends timed at Vim shapes, forward and forward+backward.

Backends: ``reference`` (sequential PyTorch), ``chunked`` (vectorised PyTorch), ``cpu`` (the C++ kernel of
``selective_scan(backend="cpu")``, (B, E, L) layout), ``mixer`` (the time-major C++ kernel that the Vim models
run on CPU, with recompute in backward; its inputs are stored time-major, (B, L, E), as the model's are),
``mambapy`` (that package's parallel scan, when it imports), and with ``--device cuda`` ``triton`` (the
Triton kernels) and ``cuda`` (mamba_ssm's kernel, when it runs). All run the Vim configuration: float32,
D, z and delta_bias given, softplus on. Default shapes: vim_tiny (E=384) and vim_small (E=768) at 224 px
(L=197, batch 8) and 1248 px (L=6085, batch 1), N=16; also ``small-224-b32`` (batch 32) and ``tiny``.
On CUDA every timed call ends with a synchronisation, each backend runs once untimed before the timing
(Triton compiles its kernels then), and fwd+bwd memory is ``torch.cuda.max_memory_allocated`` in-process.

Time = best of the timed repeats after one warm-up call; "forward" runs under ``no_grad``, "fwd+bwd" runs
the forward with autograd and ``torch.autograd.grad`` for all eight inputs. At each shape and mode the
backends take turns, one call each, so that load from other work affects them alike; a backend stops
repeating once it has spent ``--budget-s`` seconds, so slow backends at long L get fewer repeats (listed in
the JSON); a combination whose autograd graph would need more than ``--max-gib`` is skipped and marked so.
Exp floors: the time of ``torch.exp``, and of ``torch.exp2``, over B*E*L*N float32 values (one exp per state
update, the least a selective scan must compute), as repeated calls on one cache-resident buffer of at most
``EXP_BUFFER`` values on the same threads, timed like a backend (best pass) in the same round-robin
(:class:`ExpFloor`; the JSON also has the number of calls times the fastest single call); every backend's
time is also given as a multiple of each. ``torch.exp`` runs MKL's code, which was several times slower on
the AMD CPUs measured than on an Intel one (see :mod:`vimtune.bench.exp_floor`); ``torch.exp2`` runs the
SLEEF code bundled with ATen on every CPU, so its multiple is the one to compare across machines. On a
loaded machine at several threads the floors' many short parallel calls suffer more from other processes
than one kernel call does: run it on a quiet machine, or at one thread.
Peak extra memory of fwd+bwd: a fresh subprocess builds the inputs and the output cotangent, warms the
backend up on a tiny problem, resets its peak RSS (Linux VmHWM) to the current RSS, runs forward+backward
once and reports VmHWM minus the RSS before (outputs and gradients included).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vimtune.bench.exp_floor import ExpFloor
from vimtune.bench.measure import current_rss_bytes, high_water_rss_bytes, reset_high_water_rss
from vimtune.bench.runner import (
    bench_command,
    load_text,
    machine_line,
    machine_with_load,
    run_json_worker,
    write_results,
)
from vimtune.ops.scan_chunked import DEFAULT_CHUNK, selective_scan_chunked
from vimtune.ops.scan_cuda import cuda_kernel_available, selective_scan_cuda
from vimtune.ops.scan_reference import gate_output, prepare_delta, selective_scan_reference
from vimtune.ops.triton import triton_available

SHAPES = {  # name -> (batch, E, L, N)
    "tiny": (1, 16, 20, 4),  # smoke runs (e.g. the GPU script's CPU dry run)
    "small-224-b32": (32, 768, 197, 16),  # the Triton target shape
    "tiny-224": (8, 384, 197, 16),
    "small-224": (8, 768, 197, 16),
    "tiny-1248": (1, 384, 6085, 16),
    "small-1248": (1, 768, 6085, 16),
}
MODES = ("forward", "fwd+bwd")
EXP_FLOORS = {"exp floor": torch.exp, "exp2 floor": torch.exp2}  # the floor steps among the timed backends
DEFAULT_SHAPES = ["tiny-224", "small-224", "tiny-1248", "small-1248"]
TIME_MAJOR = frozenset({"mixer"})  # backends whose inputs are stored (B, L, X), as the models store them
# (fast, slow) backend pairs whose speed ratio gets its own column when both ran
PAIRS = (("cpu", "mambapy"), ("triton", "chunked"), ("triton", "cuda"))


def _mambapy(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
             delta_bias: Tensor, delta_softplus: bool) -> Tensor:
    """mambapy's pscan-based ``MambaBlock.selective_scan`` on our (B, E, L) layout, gate applied here."""
    from mambapy.mamba import MambaBlock

    dt = prepare_delta(delta, delta_bias, delta_softplus)
    y = MambaBlock.selective_scan(None, u.mT, dt.mT, A, B.mT, C.mT, D)  # (B, L, E); uses no state of self
    return gate_output(y.mT, u, None, z)


def _mixer(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
           delta_bias: Tensor, delta_softplus: bool) -> Tensor:
    """The models' time-major kernel on (B, E, L) views (time-major storage: no copies), out as such a view."""
    from vimtune.ops.mixer_cpu import selective_scan_tm

    return selective_scan_tm(u.mT, delta.mT, A, B.mT, C.mT, D, z.mT, delta_bias, delta_softplus).mT


def backends(names: list[str], device: str = "cpu") -> dict[str, Callable[..., Tensor]]:
    """The requested backends that can run on ``device`` (``cpu`` needs the kernel, ``mambapy`` the package,
    ``triton`` CUDA or the interpreter, ``cuda`` a mamba_ssm that runs)."""
    table: dict[str, Callable[..., Tensor]] = {"reference": selective_scan_reference,
                                               "chunked": selective_scan_chunked}
    if torch.device(device).type == "cpu" and "cpu" in names:
        from vimtune.ops.scan_cpu import cpu_kernel_available, selective_scan_cpu

        if cpu_kernel_available():
            table["cpu"] = selective_scan_cpu
    if torch.device(device).type == "cpu" and "mixer" in names:
        from vimtune.ops.mixer_cpu import mixer_kernels_available

        if mixer_kernels_available():
            table["mixer"] = _mixer
    if "triton" in names and triton_available(device):
        from vimtune.ops.triton.scan import selective_scan_triton

        table["triton"] = selective_scan_triton
    if "cuda" in names and cuda_kernel_available(device):
        table["cuda"] = selective_scan_cuda
    try:
        import mambapy.mamba  # noqa: F401

        table["mambapy"] = _mambapy
    except ImportError:
        pass
    return {name: table[name] for name in names if name in table}


def make_inputs(shape: tuple[int, int, int, int], grad: bool, seed: int = 0, device: str = "cpu",
                time_major: bool = False) -> dict[str, Tensor]:
    """Float32 inputs with Vim-like statistics on ``device``; all leaves require grad when ``grad``. u, delta, z
    (B, E, L) and B, C (B, N, L); with ``time_major`` the same values as views of (B, L, X) storage."""
    batch, channels, length, state = shape
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "u": torch.randn(batch, channels, length, generator=g),
        "delta": torch.randn(batch, channels, length, generator=g) - 2.0,
        "A": -torch.arange(1, state + 1, dtype=torch.float32).repeat(channels, 1),
        "B": torch.randn(batch, state, length, generator=g),
        "C": torch.randn(batch, state, length, generator=g),
        "D": torch.ones(channels),
        "z": torch.randn(batch, channels, length, generator=g),
        "delta_bias": torch.rand(channels, generator=g) - 4.0,
    }
    if time_major:
        inputs |= {k: inputs[k].mT.contiguous().mT for k in ("u", "delta", "B", "C", "z")}
    return {k: v.to(device).requires_grad_(grad) for k, v in inputs.items()}


def graph_gib(backend: str, shape: tuple[int, int, int, int]) -> float:
    """Rough size of what autograd keeps for fwd+bwd (only the PyTorch backends keep much)."""
    batch, channels, length, state = shape
    per_step = batch * channels * state * 4
    if backend == "chunked":
        return 3 * per_step * length * DEFAULT_CHUNK / 2**30
    if backend == "mambapy":
        return 8 * per_step * 2 ** (length - 1).bit_length() / 2**30
    return 6 * per_step * length / 2**30 if backend == "reference" else 0.0


def step_fn(fn: Callable[..., Tensor], inputs: dict[str, Tensor], mode: str) -> Callable[[], None]:
    """A zero-argument call running one forward (no_grad) or one forward+backward (synchronised on CUDA)."""
    sync = torch.cuda.synchronize if inputs["u"].is_cuda else lambda: None
    if mode == "forward":
        def forward() -> None:
            with torch.no_grad():
                fn(**inputs, delta_softplus=True)
            sync()

        return forward
    cotangent = torch.empty_like(inputs["u"]).copy_(torch.randn(inputs["u"].shape,  # u's layout
                                                                generator=torch.Generator().manual_seed(1)))
    leaves = list(inputs.values())

    def forward_backward() -> None:
        torch.autograd.grad(fn(**inputs, delta_softplus=True), leaves, cotangent)
        sync()

    return forward_backward


def time_steps(steps: dict[str, Callable[[], None]], repeats: int, budget_s: float,
               min_s: float = 2.0) -> dict[str, dict[str, Any]]:
    """Best time of one call per step. The steps run round-robin, one call each per round, so that load
    from other work on the machine hits all of them alike. Each step: a warm-up call, then at least
    ``repeats`` timed calls (more while under ``min_s`` seconds, at most 200), stopping once it has spent
    ``budget_s``; a warm-up call that alone takes longer than the budget is its only measurement
    (``single_run``). Python's cyclic garbage collector is paused meanwhile, as in :mod:`timeit`."""
    results: dict[str, dict[str, Any]] = {}
    times: dict[str, list[float]] = {name: [] for name in steps}
    spent: dict[str, float] = {}
    gc.disable()
    try:
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            spent[name] = time.perf_counter() - start
            if spent[name] > budget_s:
                results[name] = {"seconds": spent[name], "seconds_all": [spent[name]], "single_run": True}
        active = [name for name in steps if name not in results]
        while active:
            for name in list(active):
                start = time.perf_counter()
                steps[name]()
                times[name].append(time.perf_counter() - start)
                spent[name] += times[name][-1]
                count = len(times[name])
                if count >= 200 or spent[name] > budget_s or (count >= repeats and spent[name] >= min_s):
                    active.remove(name)
                    results[name] = {"seconds": min(times[name]), "seconds_all": times[name]}
    finally:
        gc.enable()
    return results


def memory_probe(backend: str, shape: tuple[int, int, int, int], threads: int) -> dict[str, Any]:
    """Peak extra RSS of one forward+backward in this (fresh) process; see the module docstring."""
    torch.set_num_threads(threads)
    fn = backends([backend])[backend]
    time_major = backend in TIME_MAJOR
    step_fn(fn, make_inputs((1, 16, 8, shape[3]), grad=True, time_major=time_major), "fwd+bwd")()
    inputs = make_inputs(shape, grad=True, time_major=time_major)
    step = step_fn(fn, inputs, "fwd+bwd")
    reset_high_water_rss()
    before = current_rss_bytes()
    step()
    input_bytes = sum(t.numel() * t.element_size() for t in inputs.values())
    extra = high_water_rss_bytes() - before
    return {"peak_extra_bytes": extra, "input_bytes": input_bytes, "ratio_to_inputs": extra / input_bytes}


def measure_memory(backend: str, shape_name: str, threads: int) -> dict[str, Any]:
    """Runs :func:`memory_probe` in a fresh interpreter."""
    spec = json.dumps({"backend": backend, "shape": shape_name, "threads": threads})
    return run_json_worker(["-m", "vimtune.bench.scan", "--memory-probe", spec])


def check_accuracy(fns: dict[str, Callable[..., Tensor]], shape: tuple[int, int, int, int],
                   device: str = "cpu") -> dict[str, float]:
    """Max |error| / max |reference| of out and of all gradients against the float64 reference."""
    inputs = make_inputs(shape, grad=False, device=device)
    cotangent = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cotangent = cotangent.to(device)

    def run(fn: Callable[..., Tensor], dtype: torch.dtype) -> list[Tensor]:
        leaves = {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}
        out = fn(**leaves, delta_softplus=True)
        return [out.detach(), *torch.autograd.grad(out, list(leaves.values()), cotangent.to(dtype))]

    want = run(selective_scan_reference, torch.float64)
    errors = {}
    for name, fn in fns.items():
        got = run(fn, torch.float32)
        pairs = zip(got, want, strict=True)
        errors[name] = max(((g.double() - w).abs().max() / w.abs().max()).item() for g, w in pairs)
    return errors


def _ratio(times: dict[str, float], slow: str, fast: str) -> str:
    return f"{times[slow] / times[fast]:.1f}" if slow in times and fast in times else "-"


def _time_cell(cell: dict[str, Any]) -> str:
    """Milliseconds (``*`` for a single call), or why the combination was skipped."""
    if "seconds" not in cell:
        return cell.get("skipped", "-")
    return f"{cell['seconds'] * 1e3:.1f}{'*' if cell.get('single_run') else ''}"


def to_markdown(rows: list[dict[str, Any]], machine: dict[str, Any], command: str,
                errors: dict[str, float], error_shape: str) -> str:
    """Times, speed-ups over ``reference``, state updates per second, and every backend's time as a multiple
    of each exp floor (rows with a backend of ``EXP_FLOORS``), per shape and mode."""
    names = list(dict.fromkeys(r["backend"] for r in rows if r["backend"] not in EXP_FLOORS))
    others = [n for n in names if n != "reference"]
    pairs = [(fast, slow) for fast, slow in PAIRS if fast in names and slow in names]
    lines = [f"GPU: {machine['gpu']} (the backends ran on it; the CPU floor columns do not apply).", ""] \
        if machine.get("gpu") else []
    lines += [
        f"Machine: {machine_line(machine)}; {load_text(machine)}; other work slows every backend.",
        f"Command: `{command}`. Times in ms, best of the repeats (all times in the JSON); `x ref` = reference",
        "time / backend time. `Mupd/s` = B*E*L*N state updates per second of `cpu`. `exp floor` / `exp2 floor` =",
        "time of `torch.exp` / `torch.exp2` over B*E*L*N float32 values in cache on the same threads (one exp per",
        "state update), timed in turn with the backends; `x exp` / `x exp2` = backend time / that floor. torch.exp",
        "runs MKL's code, several times slower on the AMD CPUs measured than on an Intel one; torch.exp2 runs the",
        "SLEEF code bundled with ATen on every CPU: `x exp2` is the yardstick to compare across machines.",
        "",
        "| shape (B, E, L, N) | mode | " + " | ".join(f"{n} ms" for n in names) + " | "
        + " | ".join(f"{n} x ref" for n in others) + "".join(f" | {fast} x {slow}" for fast, slow in pairs)
        + " | cpu Mupd/s | exp floor ms | exp2 floor ms | " + " | ".join(f"{n} x exp" for n in names) + " | "
        + " | ".join(f"{n} x exp2" for n in names) + " |",
        "|---|---|" + "---:|" * (3 * len(names) + len(others) + len(pairs) + 3),
    ]
    for shape_name, mode in dict.fromkeys((r["shape"], r["mode"]) for r in rows):
        cells = {r["backend"]: r for r in rows if r["shape"] == shape_name and r["mode"] == mode}
        times = {n: c["seconds"] for n, c in cells.items() if "seconds" in c}
        row = [f"{shape_name} {SHAPES[shape_name]}", mode, *(_time_cell(cells.get(n, {})) for n in names)]
        row += [_ratio(times, "reference", name) for name in others]
        row += [_ratio(times, slow, fast) for fast, slow in pairs]
        row.append(f"{cells['cpu']['updates_per_s'] / 1e6:.0f}" if "cpu" in times else "-")
        row += [f"{times[floor] * 1e3:.2f}" if floor in times else "-" for floor in EXP_FLOORS]
        row += [_ratio(times, name, floor) for floor in EXP_FLOORS for name in names]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "`*` = a single call (the warm-up alone took longer than the time budget)."]
    memory = [r for r in rows if "memory" in r]
    if memory:
        lines += ["", "Peak extra memory of fwd+bwd (fresh process, VmHWM - RSS before; see module docstring):", "",
                  "| backend | shape | inputs MiB | peak extra MiB | extra / inputs |", "|---|---|---:|---:|---:|"]
        for r in memory:
            m = r["memory"]
            if "error" in m:
                lines.append(f"| {r['backend']} | {r['shape']} | - | {m['error']} | - |")
                continue
            lines.append(f"| {r['backend']} | {r['shape']} | {m['input_bytes'] / 2**20:.1f} | "
                         f"{m['peak_extra_bytes'] / 2**20:.1f} | {m['ratio_to_inputs']:.2f} |")
    if errors:
        listed = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
        lines += ["", f"Max error vs the float64 reference at {error_shape}, over out and all 8 gradients, "
                  f"relative to max |ref|: {listed}."]
    return "\n".join(lines) + "\n"


def cuda_memory(step: Callable[[], None], inputs: dict[str, Tensor]) -> dict[str, Any]:
    """Peak extra CUDA memory of one call of ``step`` (``max_memory_allocated`` minus what was allocated before)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    extra = torch.cuda.max_memory_allocated() - before
    input_bytes = sum(t.numel() * t.element_size() for t in inputs.values())
    return {"peak_extra_bytes": extra, "input_bytes": input_bytes, "ratio_to_inputs": extra / input_bytes}


def run_scan_benchmark(backend_names: list[str], shape_names: list[str], repeats: int = 5, budget_s: float = 20.0,
                       max_gib: float = 6.0, memory_backends: tuple[str, ...] = ("cpu",),
                       threads: int | None = None, device: str = "cpu") -> list[dict[str, Any]]:
    """One row per (shape, mode, backend): time, updates/s, or why it was skipped, with memory for fwd+bwd;
    and one row per (shape, mode) and exp floor (backend: its name in ``EXP_FLOORS``): its time (see the module
    docstring)."""
    if threads:
        torch.set_num_threads(threads)
    fns = backends(backend_names, device)
    rows = []
    for shape_name in shape_names:
        shape = SHAPES[shape_name]
        updates = shape[0] * shape[1] * shape[2] * shape[3]
        for mode in MODES:
            gib = {name: graph_gib(name, shape) if mode == "fwd+bwd" else 0.0 for name in fns}
            inputs = {name: make_inputs(shape, mode == "fwd+bwd", device=device, time_major=name in TIME_MAJOR)
                      for name in fns if gib[name] <= max_gib}
            steps = {name: step_fn(fns[name], inputs[name], mode) for name in inputs}
            if torch.device(device).type == "cuda":
                for step in steps.values():  # compiles the Triton kernels for this shape: not timed
                    step()
            floors = {name: ExpFloor(shape, function) for name, function in EXP_FLOORS.items()}
            timed = time_steps(steps | floors, repeats, budget_s)
            for name, floor in floors.items():
                rows.append({"shape": shape_name, "mode": mode, "backend": name, **timed[name],
                             "calls": floor.calls, "best_call_seconds": floor.best_call_seconds})
            for name in fns:
                row: dict[str, Any] = {"shape": shape_name, "mode": mode, "backend": name}
                if name in timed:
                    row |= timed[name] | {"updates_per_s": updates / timed[name]["seconds"]}
                else:
                    row["skipped"] = f"skipped (~{gib[name]:.0f} GiB graph)"
                if mode == "fwd+bwd" and name in memory_backends and name in steps:
                    row["memory"] = (cuda_memory(steps[name], inputs[name]) if torch.device(device).type == "cuda"
                                     else measure_memory(name, shape_name, torch.get_num_threads()))
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The options of ``vimtune bench scan``."""
    parser = argparse.ArgumentParser(prog="vimtune bench scan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["reference", "chunked", "cpu", "mixer", "mambapy"],
                        help="any of reference, chunked, cpu, mixer, mambapy, triton, cuda (left out where they "
                        "cannot run)")
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=20.0, help="stop repeating a measurement after this")
    parser.add_argument("--max-gib", type=float, default=6.0, help="skip fwd+bwd whose autograd graph is larger")
    parser.add_argument("--memory-backends", nargs="*", default=["cpu"], help="backends whose fwd+bwd peak "
                        "memory is measured in a subprocess")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scan"),
                        help="output stem: writes STEM.<cpu>.md and .json (<cpu>: model and ISA)")
    parser.add_argument("--device", default="cpu", help="run the backends on this device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.memory_probe:
        spec = json.loads(args.memory_probe)
        print(json.dumps(memory_probe(spec["backend"], SHAPES[spec["shape"]], spec["threads"])))
        return 0
    load_before = os.getloadavg()[0]
    rows = run_scan_benchmark(args.backends, args.shapes, args.repeats, args.budget_s, args.max_gib,
                              tuple(args.memory_backends), args.threads, args.device)
    machine = machine_with_load(load_before)
    if torch.device(args.device).type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    error_shape = args.shapes[0]
    errors = check_accuracy(backends(args.backends, args.device), SHAPES[error_shape], args.device)
    command = bench_command("scan", argv)
    markdown = to_markdown(rows, machine, command, errors, f"{error_shape} {SHAPES[error_shape]}")
    write_results(args.out, markdown, machine, command, rows=rows, max_error_vs_float64=errors)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
