"""The method variants and the training protocol of ``vimtune demo`` and ``vimtune bench transfer``.

Imports nothing heavy, so that ``--help`` shows the methods and the protocol's defaults without
importing torch; :meth:`Protocol.run_config` imports the engine when a cell is configured.
:mod:`~vimtune.demo.protocol` runs one cell through the engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vimtune.demo.backbone import ResolvedBackbone
    from vimtune.engine import RunConfig

#: Method names of the demo and the benchmark -> (``vimtune.methods`` name, options).
METHOD_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("full", {}),
    "linear": ("linear", {}),
    "bias": ("bias", {}),
    "vpt-shallow": ("vpt-shallow", {}),
    "vpt-deep": ("vpt-deep", {}),
    "lora": ("lora", {}),
    "adapter": ("adapter", {}),
    "svp": ("svp", {}),
    "svp-cross-only": ("svp", {"inner": False}),
    "svp-inner-only": ("svp", {"cross": False}),
}


def check_methods(names: list[str]) -> list[str]:
    """``names``, checked against :data:`METHOD_VARIANTS` (``ValueError`` listing the valid ones)."""
    unknown = [n for n in names if n not in METHOD_VARIANTS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(METHOD_VARIANTS)}")
    return names


@dataclass(frozen=True)
class Protocol:
    """How every cell is trained and tested (AdamW, warmup + cosine, no augmentation, VTAB resize).

    Attributes:
        epochs: training epochs.
        batch_size: training batch.
        lr: learning rate of every method except ``full`` (not scaled by the batch).
        full_lr: learning rate of ``full`` (every parameter moves: a smaller step).
        weight_decay: AdamW decay (norms, biases, prompts' scales excluded by the engine).
        warmup_epochs: linear warmup before the cosine decay.
        validate: evaluate split ``val`` after every epoch (protocol ``val``); else ``last`` only.
        eval_batch_size: evaluation batch (does not change results).
        device: ``auto``, ``cpu`` or ``cuda`` (does not change the protocol's identity).
        num_workers: DataLoader workers (does not change results).
    """

    epochs: int
    batch_size: int = 32
    lr: float = 1e-3
    full_lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    validate: bool = True
    eval_batch_size: int = 128
    device: str = "auto"
    num_workers: int = 0

    def identity(self) -> dict[str, Any]:
        """The fields that change results (what a cached result must match)."""
        ignored = {"eval_batch_size", "device", "num_workers"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ignored}

    def run_config(self, task: Path, run_dir: Path, method: str, seed: int, backbone: ResolvedBackbone,
                   weights: Path | None) -> RunConfig:
        """The engine configuration of one cell (``weights``: the backbone file with a fresh head)."""
        from vimtune.engine import build_config  # the engine (and torch) only once a cell is configured

        base_method, options = METHOD_VARIANTS[method]
        recipe = {
            "name": f"{task.name}-{method}-s{seed}",
            "output_dir": str(run_dir),
            "model": {"name": backbone.spec.name, "kwargs": dict(backbone.spec.kwargs),
                      "backbone_weights": str(weights) if weights else None, "random_backbone": weights is None,
                      "method": base_method, "method_options": dict(options)},
            "data": {"kind": "vtab", "root": str(task), "train_split": "train",
                     "val_split": "val" if self.validate else None, "test_split": "test",
                     "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                     "num_workers": self.num_workers,
                     "augment": {"recipe": "none", "img_size": backbone.spec.img_size()}},
            "optim": {"lr": self.full_lr if base_method == "full" else self.lr, "scale_lr": False,
                      "weight_decay": self.weight_decay, "warmup_epochs": self.warmup_epochs,
                      "warmup_lr": 1e-6, "min_lr": 1e-6},
            "train": {"epochs": self.epochs, "seed": seed, "device": self.device},
        }
        return build_config(recipe)
