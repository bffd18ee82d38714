"""``run_demo``: SVP and the linear probe on scikit-learn's digits, from the committed backbone.

The output folder (``runs/demo`` by default) holds ``data/digits`` (the digits as a VTAB-layout
task), one engine run folder per method, the backbone files with fresh heads (``heads/``) and
the results (``results.md``, ``results.json``). It is replaced by the next demo; a folder that
holds files but was not written by the demo is refused.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vimtune.demo.backbone import BackboneSpec, ResolvedBackbone, resolve_backbone
from vimtune.demo.digits import write_digits_task
from vimtune.demo.protocol import Protocol, check_methods, run_cell
from vimtune.engine import RunDirExistsError
from vimtune.engine.checkpoint import atomic_write_text

MARKER = ".vimtune-demo"


@dataclass
class DemoSettings:
    """What the demo runs (defaults: the ``vimtune demo`` defaults, sized for < 5 min on 2 CPU cores).

    Attributes:
        output_dir: the demo's folder.
        backbone: the backbone to fine-tune (default: the committed one; a missing file falls
            back to a random backbone with a loud warning).
        methods: keys of :data:`~vimtune.demo.protocol.METHOD_VARIANTS`.
        train_size, test_size: digits per split (stratified, fixed by ``seed``).
        protocol: epochs, batch, learning rates (no validation split: protocol ``last``).
        seed: split and training seed.
    """

    output_dir: Path = Path("runs/demo")
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    methods: list[str] = field(default_factory=lambda: ["svp", "linear"])
    train_size: int = 300
    test_size: int = 300
    protocol: Protocol = field(default_factory=lambda: Protocol(epochs=2, batch_size=16, lr=5e-3, validate=False))
    seed: int = 0


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


def _report(settings: DemoSettings, backbone: ResolvedBackbone, rows: list[dict[str, Any]], seconds: float) -> str:
    source = backbone.file or "random initialisation"
    lines = [
        "# vimtune demo: fine-tuning on scikit-learn's digits",
        "",
        f"Backbone `{backbone.spec.name}` {backbone.spec.kwargs or ''} from {source}; "
        f"digits upsampled from 8x8 to {backbone.spec.img_size()} px RGB; {settings.train_size} train / "
        f"{settings.test_size} test images (stratified, seed {settings.seed}); {settings.protocol.epochs} epoch(s), "
        f"batch {settings.protocol.batch_size}, lr {settings.protocol.lr}; test accuracy after the last epoch.",
        "",
        results_table(rows),
        "",
        f"Total time {seconds:.0f} s.",
    ]
    if backbone.warning:
        lines += ["", f"**{backbone.warning}**"]
    return "\n".join(lines) + "\n"


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run the demo; returns what ``results.json`` holds (``rows``: one result per method)."""
    check_methods(settings.methods)
    backbone = resolve_backbone(settings.backbone, random_fallback=True)
    if backbone.warning:
        print(f"\n{'!' * 100}\n{backbone.warning}\n{'!' * 100}\n", file=sys.stderr, flush=True)
    root = settings.output_dir
    _claim(root)
    start = time.perf_counter()
    task = write_digits_task(root / "data" / "digits", settings.train_size, settings.test_size, settings.seed)
    rows = [run_cell(task, root / method, method, settings.seed, settings.protocol, backbone, root / "heads")
            for method in settings.methods]
    seconds = time.perf_counter() - start
    report = _report(settings, backbone, rows, seconds)
    result = {
        "backbone": backbone.describe(),
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("output_dir", "backbone")},
        "seconds": round(seconds, 1),
        "rows": rows,
    }
    atomic_write_text(root / "results.json", json.dumps(result, indent=2))
    atomic_write_text(root / "results.md", report)
    print("\n" + report)
    return result
