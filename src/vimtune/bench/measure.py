"""One measurement in a fresh process: build a model, time inference or a training step, report peak RSS.

Run as ``python -m vimtune.bench.measure '<json spec>'``; prints one JSON line. ``peak_extra_bytes`` is the
peak resident-set size (``VmHWM``, reset after the library warm-up) minus the RSS before the model is built;
``peak_rss_bytes`` the process's whole peak (``ru_maxrss``), which a fresh process per measurement makes that
measurement's own.

Spec keys: ``model`` (timm name), ``model_kwargs`` (dict), ``method`` (name or null) and
``method_options``, ``mode`` (``infer`` | ``train``), ``batch``, ``img_size``, ``dtype``
(``float32`` | ``bfloat16``), ``repeats``, ``warmup``, ``threads``, ``grad_checkpointing`` (bool), ``device`` (``cpu``
(default) | ``cuda``), ``breakdown`` (bool: two more steps under ``torch.profiler``, the faster one's self time per
group of :mod:`vimtune.bench.breakdown`, returned as ``breakdown``; CPU only), ``cpu_matmul`` (null: as the
environment says; ``auto`` | ``torch`` | ``onednn``: sets ``VIMTUNE_CPU_MATMUL`` and makes every plain
``nn.Linear`` of the model, e.g. a timm ViT's, a :class:`vimtune.ops.cpu_linear.Linear`, so that every model
compared takes the same path for its float32 linears).
On CUDA every timed call ends with a synchronisation, and ``peak_extra_bytes`` is
``torch.cuda.max_memory_allocated`` from before the model was built (weights + activations + workspace).
Times: ``seconds`` is the best wall time of a timed call, ``cpu_seconds`` the least CPU time (user + system,
all the process's threads) of one, which other work on a shared machine disturbs less.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

import torch

from vimtune.allocator import keep_freed_memory
from vimtune.bench.breakdown import profile_breakdown
from vimtune.ops import resolve_backend

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _status_bytes(field: str) -> int:
    """A ``kB`` field of Linux ``/proc/self/status`` (e.g. ``VmRSS``), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def current_rss_bytes() -> int:
    """Resident-set size of this process now."""
    return _status_bytes("VmRSS")


def high_water_rss_bytes() -> int:
    """Peak resident-set size since start or since the last reset (``echo 5 > /proc/self/clear_refs``)."""
    return _status_bytes("VmHWM")


def reset_high_water_rss() -> None:
    """Reset the peak resident-set size ``VmHWM`` (:func:`high_water_rss_bytes`) to the current RSS."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def peak_rss_bytes() -> int:
    """Peak resident-set size of this process so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def warm_up_libraries(device: torch.device | str = "cpu") -> None:
    """Import and load what every model uses lazily (timm, vimtune, oneDNN, OpenMP threads, and on CPU the
    vimtune C++ kernels, which a CUDA run never uses)."""
    import timm  # noqa: F401

    import vimtune.methods  # noqa: F401
    import vimtune.models  # noqa: F401
    from vimtune.ops.mixer_cpu import mixer_kernels_available
    from vimtune.ops.prompt_update_cpu import prompt_kernel_available
    from vimtune.ops.rms_norm_cpu import norm_kernel_available
    from vimtune.ops.scan_cpu import cpu_kernel_available

    torch.nn.functional.conv2d(torch.randn(1, 3, 32, 32), torch.randn(8, 3, 4, 4), stride=4)
    torch.randn(64, 64) @ torch.randn(64, 64)
    if torch.device(device).type == "cpu":
        cpu_kernel_available()
        mixer_kernels_available()
        norm_kernel_available()
        prompt_kernel_available()


def build(spec: dict[str, Any]) -> torch.nn.Module:
    """The model named in ``spec``, with the method attached when one is named."""
    import timm

    import vimtune.models  # noqa: F401  (registers vim_* with timm)

    model = timm.create_model(spec["model"], **spec.get("model_kwargs", {}))
    model.set_grad_checkpointing(bool(spec.get("grad_checkpointing")))
    if spec.get("method"):
        from vimtune.methods import build as build_method

        method = build_method(spec["method"], **spec.get("method_options", {}))
        model = method.attach(model, num_classes=spec.get("model_kwargs", {}).get("num_classes"))
    if spec.get("cpu_matmul"):
        _linears_through(model, spec["cpu_matmul"])
    if spec.get("fused_attn") is False:
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = False
    return model


def _linears_through(model: torch.nn.Module, choice: str) -> None:
    """Float32 CPU linears of this process take ``choice`` (``VIMTUNE_CPU_MATMUL``), those of ``model``'s plain
    ``nn.Linear`` modules included (their class becomes vimtune's Linear: same parameters, same function)."""
    from vimtune.ops.cpu_linear import ENV_VAR, Linear, cpu_matmul_backend

    os.environ[ENV_VAR] = choice
    cpu_matmul_backend()  # rejects an unknown choice, or onednn without oneDNN, before the model runs
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = Linear


def _step_fn(model: torch.nn.Module, spec: dict[str, Any], images: torch.Tensor):
    """A zero-argument callable running one inference pass or one training step (synchronised on CUDA)."""
    dtype = DTYPES[spec.get("dtype", "float32")]
    autocast = torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    sync = torch.cuda.synchronize if images.device.type == "cuda" else lambda: None
    if spec.get("mode", "infer") == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast:
                model(images)
            sync()

        return infer
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    labels = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)

    def train_step() -> None:
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()

    return train_step


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the measurement described by ``spec`` in this process; returns times and memory."""
    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    torch.manual_seed(0)
    device = torch.device(spec.get("device", "cpu"))
    warm_up_libraries(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset_high_water_rss()  # the peak below is this measurement's, not the warm-up's or an earlier one's
    baseline = current_rss_bytes()
    model = build(spec).to(device)
    size = int(spec["img_size"])
    images = torch.randn(int(spec["batch"]), 3, size, size).to(device)
    step = _step_fn(model, spec, images)
    for _ in range(int(spec.get("warmup", 1))):
        step()
    times, cpu_times = [], []
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(int(spec.get("repeats", 3))):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    breakdown = {"breakdown": profile_breakdown(step)} if spec.get("breakdown") and device.type == "cpu" else {}
    cpu_seconds = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    best = min(times)
    gpu = {}
    if device.type == "cuda":
        gpu = {"gpu": torch.cuda.get_device_name(device), "peak_rss_extra_bytes": high_water_rss_bytes() - baseline,
               "scan_backend": resolve_backend(device)}
    return {
        "seconds": best,
        "seconds_all": times,
        "cpu_seconds": min(cpu_times),  # CPU time of all the process's threads (the least of the steps)
        "cpu_seconds_all": cpu_times,
        "minor_faults_per_step": (usage.ru_minflt - usage_before.ru_minflt) / len(times),
        "kernel_cpu_share": (usage.ru_stime - usage_before.ru_stime) / cpu_seconds if cpu_seconds > 0 else 0.0,
        "images_per_s": int(spec["batch"]) / best,
        "peak_rss_bytes": peak_rss_bytes(),
        # Linux's RSS counters are per-CPU approximations (to some pages): a measurement that allocates
        # nothing can read a peak a little below the baseline
        "peak_extra_bytes": max(high_water_rss_bytes() - baseline, 0),
        "threads": torch.get_num_threads(),
    } | breakdown | gpu | ({"peak_extra_bytes": torch.cuda.max_memory_allocated(device)} if gpu else {})


def run_worker() -> None:
    """The worker process: measure the spec in ``sys.argv[1]``, print the result as one JSON line."""
    keep_freed_memory()  # as the vimtune command runs (skipped in the live-memory worker: glibc variables set)
    spec = json.loads(sys.argv[1])
    try:
        result = measure(spec)
    except (RuntimeError, MemoryError) as err:  # e.g. out of memory: reported, not fatal to the suite
        result = {"error": f"{type(err).__name__}: {err}"[:500]}
    print(json.dumps(result))


if __name__ == "__main__":
    run_worker()
