"""``vimtune bench resolution``: Vim-Ti vs DeiT-Ti inference speed and peak memory across resolutions.

Both models random-initialised, eval mode, same dtype and thread count; each measurement runs in a
fresh subprocess (peak RSS), and the two models are measured alternately at every setting so that
machine drift affects both. Writes a markdown table, a JSON file and a two-panel PNG.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vimtune.bench.runner import machine_description, machine_line, run_measurement

MODELS = {"vim": "vim_tiny_patch16_224", "deit": "deit_tiny_patch16_224"}
RESOLUTIONS = [224, 512, 640, 738, 1024, 1248]


def measure_all(resolutions: list[int], batches: list[int], dtypes: list[str], repeats: int,
                threads: int | None, max_batch_pixels: int) -> list[dict[str, Any]]:
    """Rows of (model, resolution, batch, dtype, images/s, peak memory), Vim and DeiT alternately."""
    rows = []
    for res in resolutions:
        for batch in batches:
            if batch > 1 and batch * res * res > max_batch_pixels:
                continue
            for dtype in dtypes:
                for model_key in (("vim", "deit") if len(rows) % 4 == 0 else ("deit", "vim")):
                    spec = {"model": MODELS[model_key], "model_kwargs": {"img_size": res},
                            "mode": "infer", "batch": batch, "img_size": res, "dtype": dtype,
                            "repeats": repeats, "warmup": 1, "threads": threads}
                    result = run_measurement(spec)
                    rows.append({"model": model_key, "resolution": res, "batch": batch, "dtype": dtype, **result})
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def _pairs(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    index = {(r["model"], r["resolution"], r["batch"], r["dtype"]): r for r in rows}
    keys = sorted({(r["resolution"], r["batch"], r["dtype"]) for r in rows}, key=lambda k: (k[2], k[1], k[0]))
    return [(index[("vim", *k)], index[("deit", *k)]) for k in keys if ("vim", *k) in index and ("deit", *k) in index]


def _fmt(row: dict[str, Any], key: str, scale: float = 1.0, digits: int = 2) -> str:
    return "error" if "error" in row else f"{row[key] / scale:.{digits}f}"


def to_markdown(rows: list[dict[str, Any]], machine: dict[str, Any], command: str) -> str:
    """Table with images/s and peak extra memory per model, plus the Vim/DeiT ratios."""
    lines = [
        f"Machine: {machine_line(machine)}. Command: `{command}`.",
        "Peak memory = peak RSS of a fresh process minus its RSS before the model was built (weights +",
        "activations + workspace). Speed = best of the timed repeats.",
        "",
        "| dtype | batch | px | Vim img/s | DeiT img/s | Vim/DeiT speed | Vim MiB | DeiT MiB | Vim/DeiT memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for vim, deit in _pairs(rows):
        ok = "error" not in vim and "error" not in deit
        speed = f"{vim['images_per_s'] / deit['images_per_s']:.2f}x" if ok else "-"
        memory = f"{vim['peak_extra_bytes'] / deit['peak_extra_bytes']:.2f}x" if ok else "-"
        lines.append(
            f"| {vim['dtype']} | {vim['batch']} | {vim['resolution']} | {_fmt(vim, 'images_per_s', digits=3)} | "
            f"{_fmt(deit, 'images_per_s', digits=3)} | {speed} | {_fmt(vim, 'peak_extra_bytes', 2**20, 0)} | "
            f"{_fmt(deit, 'peak_extra_bytes', 2**20, 0)} | {memory} |"
        )
    lines += ["", crossover_sentence(rows)]
    return "\n".join(lines) + "\n"


def crossover_sentence(rows: list[dict[str, Any]]) -> str:
    """Where Vim first becomes faster / lighter than DeiT (float32, batch 1)."""
    pairs = [(v, d) for v, d in _pairs(rows) if v["dtype"] == "float32" and v["batch"] == 1
             and "error" not in v and "error" not in d]
    faster = [v["resolution"] for v, d in pairs if v["images_per_s"] > d["images_per_s"]]
    lighter = [v["resolution"] for v, d in pairs if v["peak_extra_bytes"] < d["peak_extra_bytes"]]
    speed = f"from {min(faster)} px" if faster else "at none of the measured resolutions"
    memory = f"from {min(lighter)} px" if lighter else "at none of the measured resolutions"
    return f"Crossover (float32, batch 1): Vim faster than DeiT {speed}; lighter {memory}."


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Two panels like the Vim paper's figure: log10 images/s and peak memory vs resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(11, 4))
    for model, color in (("vim", "tab:red"), ("deit", "tab:blue")):
        for dtype, style in (("float32", "-"), ("bfloat16", "--")):
            sel = sorted((r for r in rows if r["model"] == model and r["dtype"] == dtype and r["batch"] == 1
                          and "error" not in r), key=lambda r: r["resolution"])
            if not sel:
                continue
            label = f"{'Vim-Ti' if model == 'vim' else 'DeiT-Ti'} {dtype}"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vimtune bench resolution", description=__doc__)
    parser.add_argument("--resolutions", type=int, nargs="+", default=RESOLUTIONS)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--max-batch-pixels", type=int, default=8 * 640 * 640,
                        help="skip batches > 1 above this many pixels per batch")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/resolution"),
                        help="output stem: writes STEM.md, STEM.json and STEM.png")
    args = parser.parse_args(argv)
    machine = machine_description()
    rows = measure_all(args.resolutions, args.batches, args.dtypes, args.repeats, args.threads,
                       args.max_batch_pixels)
    command = "vimtune bench resolution " + " ".join(argv or [])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(rows, machine, command.strip())
    args.out.with_suffix(".md").write_text(markdown)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine | {"bf16_matmul_isa": sorted(
        machine["bf16_matmul_isa"])}, "command": command, "rows": rows}, indent=1))
    plot(rows, args.out.with_suffix(".png"))
    print(markdown)
    return 0
