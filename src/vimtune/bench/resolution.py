"""``vimtune bench resolution``: Vim-Ti vs DeiT-Ti inference speed and peak memory across resolutions.

Both models random-initialised, eval mode, same dtype and thread count; each measurement runs in a
fresh subprocess, and the two models are measured alternately at every setting so that machine drift
affects both. Speed comes from a process with vimtune's allocator setting (freed blocks kept for
reuse), peak memory from a second process that runs one pass with glibc returning freed blocks to
the OS, so that its peak RSS follows the live tensors. At float32 and batch 1, DeiT-Ti is also
measured with timm's fused attention turned off (``deit_eager``: the N x N attention matrix is
materialised, as in implementations without a memory-efficient attention kernel). ``--rounds``
times every setting that many times (the models in turn each round) and keeps each model's fastest
round, so that a slow spell of a shared machine does not land on one model alone. Writes a markdown
table, a JSON file and a two-panel PNG.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from vimtune.bench.runner import (
    LIVE_MEMORY_ENV,
    bench_command,
    fastest,
    load_text,
    machine_line,
    machine_with_load,
    run_measurement,
    write_results,
)

MODELS = {"vim": "vim_tiny_patch16_224", "deit": "deit_tiny_patch16_224", "deit_eager": "deit_tiny_patch16_224"}
RESOLUTIONS = [224, 512, 640, 738, 1024, 1248]


def measure_all(resolutions: list[int], batches: list[int], dtypes: list[str], repeats: int,
                threads: int | None, max_batch_pixels: int, device: str = "cpu", rounds: int = 1
                ) -> list[dict[str, Any]]:
    """Rows of (model, resolution, batch, dtype, images/s, peak memory), Vim and DeiT alternately.

    A row has the fastest of ``rounds`` timed processes' fields (on CPU ``peak_extra_bytes`` replaced by the
    live-memory process's; the timed process's is kept as ``timed_peak_extra_bytes``; every round's
    ``seconds`` in ``seconds_rounds``), or ``error`` when every timed process or the memory process failed.
    On CUDA one process gives both (``torch.cuda.max_memory_allocated``).
    """
    rows = []
    settings = [(res, batch, dtype) for res in resolutions for batch in batches for dtype in dtypes
                if batch == 1 or batch * res * res <= max_batch_pixels]
    for index, (res, batch, dtype) in enumerate(settings):
        order = ["vim", "deit"] if index % 2 == 0 else ["deit", "vim"]
        if dtype == "float32" and batch == 1:
            order.append("deit_eager")
        specs = {key: {"model": MODELS[key], "model_kwargs": {"img_size": res}, "mode": "infer", "batch": batch,
                       "img_size": res, "dtype": dtype, "repeats": repeats, "warmup": 1, "threads": threads,
                       "fused_attn": key != "deit_eager", "device": device} for key in order}
        timed: dict[str, list[dict[str, Any]]] = {key: [] for key in order}
        for _ in range(rounds):
            for model_key in order:
                timed[model_key].append(run_measurement(specs[model_key]))
        for model_key in order:
            result = fastest(timed[model_key]) | {"seconds_rounds": [r.get("seconds") for r in timed[model_key]]}
            if device == "cpu":
                memory = run_measurement(specs[model_key] | {"repeats": 1, "warmup": 0}, env=LIVE_MEMORY_ENV)
                if "error" not in result and "error" not in memory:
                    result |= {"timed_peak_extra_bytes": result["peak_extra_bytes"],
                               "peak_extra_bytes": memory["peak_extra_bytes"]}
                elif "error" in memory:
                    result = memory
            rows.append({"model": model_key, "resolution": res, "batch": batch, "dtype": dtype, **result})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _settings(rows: list[dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """Per (resolution, batch, dtype) with both Vim and DeiT measured: {model key: row}, sorted for the table."""
    grouped: dict[tuple[int, int, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((row["resolution"], row["batch"], row["dtype"]), {})[row["model"]] = row
    keys = sorted(grouped, key=lambda k: (k[2], k[1], k[0]))
    return [grouped[k] for k in keys if "vim" in grouped[k] and "deit" in grouped[k]]


def _fmt(row: dict[str, Any] | None, key: str, scale: float = 1.0, digits: int = 2) -> str:
    if row is None:
        return "-"
    return "error" if "error" in row else f"{row[key] / scale:.{digits}f}"


def _ratio(num: dict[str, Any] | None, den: dict[str, Any] | None, key: str) -> str:
    if num is None or den is None or "error" in num or "error" in den:
        return "-"
    return f"{num[key] / den[key]:.2f}x"


def to_markdown(rows: list[dict[str, Any]], machine: dict[str, Any], command: str) -> str:
    """Table with images/s and peak extra memory per model, plus the Vim/DeiT ratios."""
    gpu = next((r["gpu"] for r in rows if "gpu" in r), None)
    lines = [f"GPU: {gpu}; every row on it, peak memory = `torch.cuda.max_memory_allocated` from before the model "
             "was built (weights + activations + workspace); the RSS text below does not apply.", ""] if gpu else []
    lines += [
        f"Machine: {machine_line(machine)}"
        + (f"; {load_text(machine)}" if "load_average_1min" in machine else "") + f". Command: `{command}`.",
        "Peak memory = peak RSS of a fresh process running one pass, minus its RSS after a library warm-up, before",
        "the model was built (weights + activations + workspace), with glibc returning every freed block of 128 KiB",
        "or more to the OS (`MALLOC_MMAP_THRESHOLD_=131072`, so RSS follows the live tensors). Speed = best of the",
        "timed repeats in another fresh process that keeps freed blocks for reuse, as the vimtune command does",
        "(with `--rounds`: of the fastest round; the models are timed in turn every round)",
        "(`vimtune.allocator`). DeiT uses PyTorch's fused",
        "attention (no N x N matrix on CPU); `DeiT eager` = the same model with fused attention off",
        "(float32, batch 1 only).",
        "",
        "| dtype | batch | px | Vim img/s | DeiT img/s | Vim/DeiT speed | Vim MiB | DeiT MiB | Vim/DeiT memory "
        "| DeiT eager img/s | DeiT eager MiB | Vim/eager speed | Vim/eager memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for models in _settings(rows):
        vim, deit, eager = models["vim"], models["deit"], models.get("deit_eager")
        mib = 2**20
        lines.append(
            f"| {vim['dtype']} | {vim['batch']} | {vim['resolution']} | {_fmt(vim, 'images_per_s', digits=3)} | "
            f"{_fmt(deit, 'images_per_s', digits=3)} | {_ratio(vim, deit, 'images_per_s')} | "
            f"{_fmt(vim, 'peak_extra_bytes', mib, 0)} | {_fmt(deit, 'peak_extra_bytes', mib, 0)} | "
            f"{_ratio(vim, deit, 'peak_extra_bytes')} | {_fmt(eager, 'images_per_s', digits=3)} | "
            f"{_fmt(eager, 'peak_extra_bytes', mib, 0)} | {_ratio(vim, eager, 'images_per_s')} | "
            f"{_ratio(vim, eager, 'peak_extra_bytes')} |"
        )
    lines += ["", crossover_sentence(rows)]
    return "\n".join(lines) + "\n"


def crossover_sentence(rows: list[dict[str, Any]]) -> str:
    """Where Vim first becomes faster / lighter than DeiT (float32, batch 1), for fused and eager attention."""
    parts = []
    for key, name in (("deit", "DeiT"), ("deit_eager", "DeiT eager")):
        pairs = [(m["vim"], m[key]) for m in _settings(rows) if key in m and m["vim"]["dtype"] == "float32"
                 and m["vim"]["batch"] == 1 and "error" not in m["vim"] and "error" not in m[key]]
        if not pairs:
            continue
        faster = [v["resolution"] for v, d in pairs if v["images_per_s"] > d["images_per_s"]]
        lighter = [v["resolution"] for v, d in pairs if v["peak_extra_bytes"] < d["peak_extra_bytes"]]
        speed = f"from {min(faster)} px" if faster else "at none of the measured resolutions"
        memory = f"from {min(lighter)} px" if lighter else "at none of the measured resolutions"
        parts.append(f"Vim faster than {name} {speed}, lighter {memory}")
    return "Crossover (float32, batch 1): " + "; ".join(parts) + "."


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Two panels like the Vim paper's figure: log10 images/s and peak memory vs resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(11, 4))
    names = {"vim": ("Vim-Ti", "tab:red"), "deit": ("DeiT-Ti", "tab:blue"),
             "deit_eager": ("DeiT-Ti eager", "tab:green")}
    for model, (name, color) in names.items():
        for dtype, style in (("float32", "-"), ("bfloat16", "--")):
            sel = sorted((r for r in rows if r["model"] == model and r["dtype"] == dtype and r["batch"] == 1
                          and "error" not in r), key=lambda r: r["resolution"])
            if not sel:
                continue
            label = f"{name} {dtype}"
            res = [r["resolution"] for r in sel]
            ax_speed.plot(res, [r["images_per_s"] for r in sel], style, color=color, marker="o", label=label)
            ax_mem.plot(res, [r["peak_extra_bytes"] / 2**30 for r in sel], style, color=color, marker="o", label=label)
    ax_speed.set_yscale("log")
    ax_speed.set(xlabel="resolution (px)", ylabel="images / s (log scale)", title="Inference speed, batch 1")
    ax_mem.set(xlabel="resolution (px)", ylabel="peak extra memory (GiB)", title="Peak memory, batch 1")
    for ax in (ax_speed, ax_mem):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``vimtune bench resolution``."""
    parser = argparse.ArgumentParser(prog="vimtune bench resolution", description=__doc__)
    parser.add_argument("--resolutions", type=int, nargs="+", default=RESOLUTIONS)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every setting this many times, the models in turn, and keep each model's fastest")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--max-batch-pixels", type=int, default=8 * 640 * 640,
                        help="skip batches > 1 above this many pixels per batch")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/resolution"),
                        help="output stem: writes STEM.<cpu>.md, .json and .png (<cpu>: model and ISA)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="run the models on this device (cuda: GPU memory from torch.cuda)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = measure_all(args.resolutions, args.batches, args.dtypes, args.repeats, args.threads,
                       args.max_batch_pixels, args.device, args.rounds)
    machine = machine_with_load(load_before)
    command = bench_command("resolution", argv)
    stem = write_results(args.out, to_markdown(rows, machine, command), machine, command, rows=rows)
    plot(rows, stem.with_name(stem.name + ".png"))
    return 0
