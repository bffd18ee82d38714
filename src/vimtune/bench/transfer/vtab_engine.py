"""The trainer of the VTAB-1k protocol: one :class:`~vimtune.bench.transfer.vtab.Trial` through the engine."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vimtune.bench.transfer.vtab import Trial
from vimtune.data import VTabDataset
from vimtune.demo import METHOD_VARIANTS, Protocol, ResolvedBackbone
from vimtune.engine import run_training
from vimtune.engine.run_dir import RunFiles
from vimtune.methods.defaults import method_defaults


@dataclass(frozen=True)
class EngineTrainer:
    """Trains trials with :func:`~vimtune.engine.run_training`, from a backbone with a fresh head.

    Every trial: the method's defaults (:mod:`vimtune.methods.defaults`) with the trial's learning
    rate and epochs, batch ``batch_size``, ``warmup_epochs`` of linear warmup then cosine, no
    augmentation, images resized to the backbone's input size, the trial's splits.

    Attributes:
        data_root: folder of the VTAB-layout task folders.
        root: where the run folders go (``ROOT/<task>/<method>/<trial name>``) and
            the backbone files with fresh heads (``ROOT/heads``).
        backbone: the backbone and its weights.
        batch_size: training batch.
        warmup_epochs: linear warmup epochs.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    data_root: Path
    root: Path
    backbone: ResolvedBackbone
    batch_size: int = 32
    warmup_epochs: int = 1
    device: str = "auto"

    def run_dir(self, trial: Trial) -> Path:
        """The engine run folder of ``trial``."""
        return self.root / trial.task / trial.method / trial.name

    def __call__(self, trial: Trial) -> dict[str, Any]:
        """Train ``trial`` (resuming its run folder when one is there); returns its record.

        Returns:
            ``{"trainable_params", "total_params", "seconds" (wall), "cpu_seconds" (this process's
            CPU time; a resumed trial counts only the part run since), "resumed", "run_dir"}``,
            plus ``val_curve`` (val accuracy after each epoch) and ``val_acc`` (after the last)
            when the trial validates, and ``test_acc`` (after the last epoch) when it tests.
            Accuracies are fractions in [0, 1].
        """
        task = self.data_root / trial.task
        weights = self.backbone.weights_for(VTabDataset(task, "train").num_classes, trial.seed, self.root / "heads")
        defaults = method_defaults(METHOD_VARIANTS[trial.method][0])
        protocol = Protocol(epochs=trial.epochs, batch_size=self.batch_size, lr=trial.lr, full_lr=trial.lr,
                            weight_decay=defaults.weight_decay, warmup_epochs=self.warmup_epochs, device=self.device)
        run_dir = self.run_dir(trial)
        cfg = protocol.run_config(task, run_dir, trial.method, trial.seed, self.backbone, weights)
        cfg.data.train_split, cfg.data.val_split, cfg.data.test_split = trial.splits
        cfg.optim.warmup_lr, cfg.optim.min_lr = defaults.warmup_lr, defaults.min_lr
        resume = run_dir.is_dir()
        wall, cpu = time.perf_counter(), time.process_time()
        final = run_training(cfg, resume=resume, overwrite=not resume)
        record: dict[str, Any] = {
            "trainable_params": final["trainable_params"],
            "total_params": final["total_params"],
            "seconds": round(time.perf_counter() - wall, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1),
            "resumed": resume,
            "run_dir": str(run_dir),
        }
        if cfg.data.val_split:
            record["val_curve"] = [r["val_top1"] / 100 for r in RunFiles(run_dir).read_history()]
            record["val_acc"] = record["val_curve"][-1]
        if cfg.data.test_split:
            record["test_acc"] = final["protocols"]["last"]["test_top1"] / 100
        return record
