"""The run folder: where each output goes, and the refusal to overwrite saved work."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class RunDirExistsError(RuntimeError):
    """The run folder already holds files and neither resuming nor overwriting was asked for."""


@dataclass(frozen=True)
class RunFiles:
    """Paths inside a run folder ``root``."""

    root: Path

    @property
    def config(self) -> Path:
        """The configuration used (YAML)."""
        return self.root / "config.yaml"

    @property
    def classes(self) -> Path:
        """Class names, index = label (JSON list)."""
        return self.root / "classes.json"

    @property
    def metrics(self) -> Path:
        """One JSON line per finished epoch."""
        return self.root / "metrics.jsonl"

    @property
    def final_metrics(self) -> Path:
        """Test results of every selection protocol the run supports (JSON)."""
        return self.root / "final_metrics.json"

    @property
    def checkpoint(self) -> Path:
        """Resume state (trainable weights, optimizer, scheduler, EMA, RNG, counters)."""
        return self.root / "checkpoint.pt"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def adapter(self) -> Path:
        """``save_adapter`` export of the final weights (fine-tuning runs)."""
        return self.root / "adapter"

    @property
    def curves(self) -> Path:
        """Loss, accuracy and learning rate against epoch (PNG), redrawn after every epoch."""
        return self.root / "curves.png"

    @property
    def report(self) -> Path:
        """The self-contained HTML report of the run."""
        return self.root / "report.html"

    @property
    def viz_dir(self) -> Path:
        """Pictures of ``vimtune viz`` that ``vimtune report`` embeds."""
        return self.root / "viz"

    @property
    def eval_dir(self) -> Path:
        """Outputs of ``vimtune eval``."""
        return self.root / "eval"

    def read_history(self) -> list[dict[str, Any]]:
        """The per-epoch records of ``metrics.jsonl`` (empty when there is none)."""
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]

    def read_classes(self) -> list[str]:
        """The class names saved at the start of training."""
        if not self.classes.is_file():
            raise FileNotFoundError(f"'{self.root}' is not a run folder: '{self.classes}' is missing")
        return json.loads(self.classes.read_text(encoding="utf-8"))

    def weights(self, which: str) -> Path:
        """Trainable-state safetensors: ``last``, ``best_val`` or ``best_test``."""
        return self.root / "weights" / f"{which}.safetensors"


def prepare_run_dir(path: str | Path, resume: bool, overwrite: bool, create: bool = True) -> RunFiles:
    """Check (and with ``create`` make) the run folder ``path``.

    Raises:
        RunDirExistsError: ``path`` holds files and neither ``resume`` nor ``overwrite`` is set.
        FileNotFoundError: ``resume`` of a folder that does not exist.
    """
    files = RunFiles(Path(path))
    holds_files = files.root.is_dir() and any(files.root.iterdir())
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if resume and not files.root.is_dir():
        raise FileNotFoundError(f"nothing to resume: run folder '{files.root}' does not exist")
    if holds_files and not resume:
        if not overwrite:
            raise RunDirExistsError(
                f"run folder '{files.root}' already exists and holds files; pass --resume to continue "
                "that run, --overwrite to delete it and start over, or choose another --output-dir"
            )
        if create:
            shutil.rmtree(files.root)
    if create:
        (files.root / "weights").mkdir(parents=True, exist_ok=True)
    return files
