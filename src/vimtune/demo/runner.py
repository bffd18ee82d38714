"""``run_demo``: SVP and the linear probe on scikit-learn's digits, from the committed backbone.

The output folder (``runs/demo`` by default) holds ``data/digits`` (the digits as a VTAB-layout
task), one engine run folder per method, the backbone files with fresh heads (``heads/``) and
the results (``results.md``, ``results.json``). It is replaced by the next demo; a folder that
holds files but was not written by the demo is refused. With ``results`` set, the table is also
written, with the machine and its load, to ``<results>.<cpu slug>.md`` / ``.json`` (the committed
``benchmarks/results/demo.*`` files that the README shows).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vimtune.demo.backbone import ResolvedBackbone, resolve_backbone
from vimtune.demo.digits import write_digits_task
from vimtune.demo.protocol import check_methods, run_cell
from vimtune.demo.settings import DemoSettings
from vimtune.engine import RunDirExistsError
from vimtune.engine.checkpoint import atomic_write_text

MARKER = ".vimtune-demo"
# environment variables that change the timings, written into the results file's command when set
TIMING_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")


def _claim(root: Path) -> None:
    """Empty the demo folder ``root`` (refusing one with files that the demo did not write)."""
    if root.is_dir() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise RunDirExistsError(f"'{root}' holds files that are not a demo's; choose another --output-dir")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by `vimtune demo`; replaced by the next demo\n", encoding="utf-8")


def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: method, test accuracy, trainable parameters (and share), time."""
    lines = ["| method | test accuracy | trainable params | share of model | time (s) |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        share = row["trainable_params"] / row["total_params"]
        lines.append(f"| {row['method']} | {row['protocols']['last']['test_acc']:.3f} | "
                     f"{row['trainable_params']:,} | {share:.2%} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def _report(settings: DemoSettings, backbone: ResolvedBackbone, rows: list[dict[str, Any]], seconds: float,
            provenance: list[str] = ()) -> str:
    """The demo's markdown: a title (or the ``provenance`` lines: command, machine), setup, **Results** (table,
    total time)."""
    source = "random initialisation"
    if backbone.file:
        source = f"{Path(backbone.file).name} (sha256 {backbone.sha256[:12]}...)"
    kwargs = f" {backbone.spec.kwargs}" if backbone.spec.kwargs else ""
    lines = [  # a results file starts with its provenance, as the benchmark files do; the run's own with a title
        *(f"{line}\n" for line in provenance or ["# vimtune demo: fine-tuning on scikit-learn's digits"]),
        f"Backbone `{backbone.spec.name}`{kwargs} from {source}; "
        f"digits upsampled from 8x8 to {backbone.spec.img_size()} px RGB; {settings.train_size} train / "
        f"{settings.test_size} test images (stratified, seed {settings.seed}); {settings.protocol.epochs} epoch(s), "
        f"batch {settings.protocol.batch_size}, lr {settings.protocol.lr}; test accuracy after the last epoch.",
        "",
        "**Results**",
        "",
        results_table(rows),
        "",
        f"Total time {seconds:.0f} s, {sum(row['seconds'] for row in rows):.0f} s of it in the table's runs "
        f"(the rest: writing the digits and the backbone's fresh heads).",
    ]
    if backbone.warning:
        lines += ["", f"**{backbone.warning}**"]
    return "\n".join(lines) + "\n"


def _provenance(command: str, machine: dict[str, Any], load: tuple[float, float]) -> list[str]:
    """Lines saying how the results file was made: the command, the machine and its 1-minute load average."""
    from vimtune.bench.runner import machine_line

    return [
        f"Written by `{command}` (run from the repository root; it regenerates this file).",
        f"Machine: {machine_line(machine)}. Load average (1 min) {load[0]:.1f} before the run and {load[1]:.1f} "
        f"after it (the run itself adds up to {machine['threads']}): above that, other processes shared the "
        f"cores and the times are longer than on an idle machine.",
    ]


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run the demo; returns what ``results.json`` holds (``rows``: one result per method)."""
    check_methods(settings.methods)
    backbone = resolve_backbone(settings.backbone, random_fallback=True)
    if backbone.warning:
        print(f"\n{'!' * 100}\n{backbone.warning}\n{'!' * 100}\n", file=sys.stderr, flush=True)
    root = settings.output_dir
    _claim(root)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    task = write_digits_task(root / "data" / "digits", settings.train_size, settings.test_size, settings.seed)
    rows = [run_cell(task, root / method, method, settings.seed, settings.protocol, backbone, root / "heads")
            for method in settings.methods]
    seconds = time.perf_counter() - start
    report = _report(settings, backbone, rows, seconds)
    result = {
        "backbone": backbone.describe(),
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("output_dir", "backbone", "results")},
        "seconds": round(seconds, 1),
        "rows": rows,
    }
    atomic_write_text(root / "results.json", json.dumps(result, indent=2))
    atomic_write_text(root / "results.md", report)
    if settings.results is None:
        print("\n" + report)
        return result
    from vimtune.bench.runner import machine_description, write_results

    machine = machine_description()
    load = (load_before, os.getloadavg()[0])
    cli = sys.argv[1:2] == ["demo"]  # run as `vimtune demo ...` (else from Python: settings in the JSON)
    command = " ".join([*(f"{k}={os.environ[k]}" for k in TIMING_ENV if k in os.environ),
                        shlex.join(["vimtune", *sys.argv[1:]]) if cli else "vimtune.demo.run_demo (Python)"])
    markdown = _report(settings, backbone, rows, seconds, _provenance(command, machine, load))
    write_results(settings.results, markdown, machine, command, load_average=load, **result)
    return result
