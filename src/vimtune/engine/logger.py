"""Per-epoch logging on rank 0: ``metrics.jsonl``, TensorBoard scalars and a console line."""

from __future__ import annotations

import json
import os
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from vimtune.engine.checkpoint import atomic_write_text
from vimtune.engine.run_dir import RunFiles


class RunLogger:
    """Writes one record per finished epoch.

    On construction ``metrics.jsonl`` is rewritten to exactly ``history`` (the records of the
    epochs the resume checkpoint holds) and TensorBoard events from later epochs are purged, so a
    resumed run has no repeated or missing epochs.

    Args:
        files: the run folder.
        history: records of the epochs already done (empty for a new run).
    """

    def __init__(self, files: RunFiles, history: list[dict[str, Any]]) -> None:
        self.files = files
        atomic_write_text(files.metrics, "".join(json.dumps(r) + "\n" for r in history))
        self.writer = SummaryWriter(str(files.tensorboard), purge_step=len(history) + 1)

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Append ``record`` (it holds ``epoch``) to the JSON lines, TensorBoard and the console."""
        with open(self.files.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        epoch = record["epoch"]
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key.replace("_", "/", 1), value, epoch)
        self.writer.flush()
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        tqdm.write(shown)

    def close(self) -> None:
        self.writer.close()
