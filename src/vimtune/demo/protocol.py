"""One fine-tuning protocol, shared by ``vimtune demo`` and ``vimtune bench transfer``.

A *cell* is one (task, method, seed): the engine's :func:`~vimtune.engine.run_training` on a
VTAB-layout task folder, from a :class:`~vimtune.demo.backbone.ResolvedBackbone` with a fresh
head, trained on split ``train``, validated on ``val`` after every epoch when the protocol
validates, tested on ``test`` at the end under every selection protocol the run supports
(``last``; ``val`` = the epoch with the best val top-1). Nothing is selected on test.
:data:`METHOD_VARIANTS` and :class:`Protocol` live in the torch-free :mod:`~vimtune.demo.protocol_spec`
(re-exported here).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vimtune.data import VTabDataset
from vimtune.demo.backbone import ResolvedBackbone
from vimtune.demo.protocol_spec import METHOD_VARIANTS as METHOD_VARIANTS
from vimtune.demo.protocol_spec import Protocol
from vimtune.demo.protocol_spec import check_methods as check_methods
from vimtune.engine import run_training


def _fractions(record: dict[str, Any]) -> dict[str, Any]:
    """A protocol record of ``final_metrics.json`` with accuracies as fractions in [0, 1]."""
    out = {"epoch": record["epoch"], "test_acc": record["test_top1"] / 100.0}
    if "val_top1" in record:
        out["val_acc"] = record["val_top1"] / 100.0
    return out


def run_cell(task: Path, run_dir: Path, method: str, seed: int, protocol: Protocol, backbone: ResolvedBackbone,
             heads_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Fine-tune ``method`` on ``task`` through the engine and return the cell's result.

    Args:
        task: a VTAB-layout task folder (``train800.txt``, ``test.txt``, ``val200.txt`` when
            the protocol validates).
        run_dir: the engine's run folder for this cell.
        method: a key of :data:`METHOD_VARIANTS`.
        seed: training seed (also seeds the fresh head).
        protocol: the training protocol.
        backbone: where the backbone weights come from.
        heads_dir: where backbone files with fresh heads are written (and reused).
        resume: continue the run folder's run (a finished run is only tested again);
            otherwise an existing run folder is replaced.

    Returns:
        ``{"task", "method", "seed", "trainable_params", "total_params", "seconds", "protocols":
        {"last": {"epoch", "test_acc", ["val_acc"]}, ["val": {...}]}}`` with accuracies in [0, 1].
    """
    num_classes = VTabDataset(task, "train").num_classes
    weights = backbone.weights_for(num_classes, seed, heads_dir)
    cfg = protocol.run_config(task, run_dir, method, seed, backbone, weights)
    start = time.perf_counter()
    final = run_training(cfg, resume=resume, overwrite=not resume)
    return {
        "task": task.name,
        "method": method,
        "seed": seed,
        "trainable_params": final["trainable_params"],
        "total_params": final["total_params"],
        "seconds": round(time.perf_counter() - start, 1),
        "protocols": {name: _fractions(r) for name, r in final["protocols"].items()},
    }
