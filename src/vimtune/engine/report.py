"""Test results: the protocols of ``final_metrics.json`` and the outputs of ``vimtune eval``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from vimtune.engine.checkpoint import atomic_write_text
from vimtune.engine.distributed import DistContext, broadcast_object
from vimtune.engine.evaluate import evaluate
from vimtune.engine.metrics import ClassificationMeter
from vimtune.engine.plots import save_confusion_png
from vimtune.engine.protocols import Selection, available_protocols, select
from vimtune.engine.run_dir import RunFiles
from vimtune.engine.trainable import Trainable
from vimtune.models.checkpoint import load_safetensors


def evaluate_selection(
    model: nn.Module,
    trainable: Trainable,
    selection: Selection,
    loader: DataLoader,
    num_classes: int,
    ctx: DistContext,
    bf16: bool = False,
) -> ClassificationMeter:
    """Load the selected weights into ``model`` (read on rank 0, sent to the others) and evaluate."""
    state = load_safetensors(selection.weights) if ctx.is_main else None
    trainable.load_trainable_state(model, broadcast_object(state, ctx))
    return evaluate(model, loader, num_classes, ctx, bf16, desc=f"test ({selection.protocol})")


def protocol_results(
    model: nn.Module,
    trainable: Trainable,
    files: RunFiles,
    history: list[dict[str, Any]],
    loader: DataLoader,
    classes: list[str],
    split: str,
    ctx: DistContext,
    bf16: bool = False,
) -> dict[str, dict[str, Any]]:
    """Test every protocol the run supports: ``{protocol: {epoch, test_top1, test_top5, ...}}``.

    Rank 0 reads the files and writes each protocol's :func:`write_evaluation` files (``eval/<protocol>_<split>``:
    per-class accuracy, confusion matrix); every process takes part in the (sharded) evaluation.
    """
    results: dict[str, dict[str, Any]] = {}
    for protocol in available_protocols(history):
        selection = broadcast_object(select(files, history, protocol) if ctx.is_main else None, ctx)
        meter = evaluate_selection(model, trainable, selection, loader, len(classes), ctx, bf16)
        summary = meter.summary()
        if ctx.is_main:
            meta = {"split": split, "protocol": protocol, "epoch": selection.epoch, "weights": str(selection.weights)}
            write_evaluation(meter, classes, files.eval_dir, f"{protocol}_{split}", meta)
        record = history[selection.epoch - 1]
        results[protocol] = {
            "epoch": selection.epoch,
            **{f"test_{k}": summary[k] for k in ("top1", "top5", "loss", "count")},
            **({"val_top1": record["val_top1"]} if "val_top1" in record else {}),
            **({"warning": selection.warning} if selection.warning else {}),
        }
    return results


def format_results(results: dict[str, dict[str, Any]]) -> str:
    """Console lines, one per protocol, warnings on their own line."""
    lines = []
    for protocol, r in results.items():
        lines.append(f"protocol {protocol:9s} epoch {r['epoch']:4d}  test top-1 {r['test_top1']:6.2f}%  "
                     f"top-5 {r['test_top5']:6.2f}%")
        if "warning" in r:
            lines.append(f"  {r['warning']}")
    return "\n".join(lines)


def write_evaluation(
    meter: ClassificationMeter, classes: list[str], out_dir: Path, stem: str, meta: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``<stem>.json`` (metrics, per-class accuracy, confusion matrix, ``meta``) and
    ``<stem>_confusion.png`` in ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    support = meter.confusion.sum(dim=1).tolist()
    record = {
        **meta,
        **meter.summary(),
        "per_class": [
            {"class": name, "accuracy": acc, "support": n}
            for name, acc, n in zip(classes, meter.per_class_accuracy(), support, strict=True)
        ],
        "confusion_matrix": meter.confusion.tolist(),
    }
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}_confusion.png"
    atomic_write_text(json_path, json.dumps(record, indent=2))
    save_confusion_png(meter.confusion, classes, png_path, title=f"{stem}: top-1 {record['top1']:.2f}%")
    return json_path, png_path


def format_per_class(meter: ClassificationMeter, classes: list[str]) -> str:
    """A two-column table of per-class accuracy."""
    width = max(len(c) for c in classes)
    rows = [f"  {'class':{width}s}  accuracy  support"]
    support = meter.confusion.sum(dim=1).tolist()
    for name, acc, n in zip(classes, meter.per_class_accuracy(), support, strict=True):
        shown = f"{acc:7.2f}%" if acc is not None else "      -"
        rows.append(f"  {name:{width}s}  {shown}  {n:7d}")
    return "\n".join(rows)
