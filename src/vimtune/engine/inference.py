"""Loading a trained model for evaluation and prediction: from a run folder or a weights file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vimtune.data import build_eval_transform, load_rgb
from vimtune.engine.builder import build_model
from vimtune.engine.checkpoint import load_weights
from vimtune.engine.config import ModelConfig, RunConfig
from vimtune.engine.protocols import Selection, available_protocols, select
from vimtune.engine.run_dir import RunFiles
from vimtune.engine.run_lock import refuse_if_in_use
from vimtune.engine.run_record import recorded_backbone_file
from vimtune.engine.runner import load_run_config
from vimtune.engine.trainable import Trainable
from vimtune.methods import load_adapter
from vimtune.models import CheckpointError, load_checkpoint


@dataclass
class LoadedModel:
    """A model ready for inference with what is needed to feed it and name its outputs."""

    model: nn.Module
    trainable: Trainable
    classes: list[str]
    cfg: RunConfig
    selection: Selection | None = None


def default_protocol(history: list[dict[str, Any]]) -> str:
    """``val`` when the run validated every epoch, else ``last``."""
    return "val" if "val" in available_protocols(history) else "last"


def load_run(run_dir: str | Path, protocol: str | None = None, overrides: list[tuple[str, Any]] = ()) -> LoadedModel:
    """Rebuild a run's model from its ``config.yaml`` and load the weights ``protocol`` selects.

    A fine-tuned run's backbone is the file its ``run.json`` records, checked by SHA-256. A run
    that a live process is training is refused (its files are half-written).

    Raises:
        FileNotFoundError: not a run folder, or the selected weights are missing.
        vimtune.engine.run_lock.RunLockedError: a live process is training the run.
        ValueError: a protocol the run does not support.
        vimtune.models.CheckpointError: weights that do not fit the configured model.
        vimtune.models.provenance.ProvenanceError: the backbone is missing or not the run's.
    """
    files = RunFiles(Path(run_dir))
    refuse_if_in_use(files.root)
    cfg = load_run_config(run_dir, overrides)
    classes = files.read_classes()
    history = files.read_history()
    selection = select(files, history, protocol or default_protocol(history))
    model, trainable = build_model(cfg.model, len(classes), recorded_backbone_file(cfg.model, files))
    load_weights(model, trainable, selection.weights)
    return LoadedModel(model.eval(), trainable, classes, cfg, selection)


def load_weights_file(path: str | Path, cfg: RunConfig, classes: list[str]) -> LoadedModel:
    """A model from a stand-alone file: full-model weights (safetensors/.pth) or an adapter folder.

    ``cfg.model`` names the architecture (and, for an adapter, the backbone weights);
    ``cfg.data.augment`` gives the evaluation transform.

    Raises:
        vimtune.models.CheckpointError: the file does not fit ``cfg.model`` with ``len(classes)`` classes.
    """
    path = Path(path)
    model_cfg = cfg.model
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: '{path}'")
    if path.is_dir():
        model, method = load_adapter(path, backbone_weights=model_cfg.backbone_weights)
        if model.num_classes != len(classes):
            raise CheckpointError(f"adapter '{path}' has {model.num_classes} classes, the data {len(classes)}")
        return LoadedModel(model.eval(), method, classes, cfg)
    model, trainable = build_model(ModelConfig(name=model_cfg.name, kwargs=model_cfg.kwargs), len(classes), None)
    report = load_checkpoint(model, path, strict=True)
    if report.reset_keys:
        raise CheckpointError(
            f"'{path}' does not fit {model_cfg.name} with {len(classes)} classes: "
            f"{'; '.join(report.notes) or ', '.join(report.reset_keys)}"
        )
    return LoadedModel(model.eval(), trainable, classes, cfg)


@torch.no_grad()
def predict_images(loaded: LoadedModel, paths: list[str], topk: int = 5, batch: int = 64,
                   ) -> list[list[tuple[str, float]]]:
    """Top-``topk`` ``(class name, probability)`` for each image file, best first (``batch`` at a time)."""
    transform = build_eval_transform(loaded.cfg.data.augment)
    chunks = []
    for start in range(0, len(paths), batch):
        images = torch.stack([transform(load_rgb(p)) for p in paths[start:start + batch]])  # (b, 3, H, W)
        chunks.append(loaded.model(images).float().softmax(dim=1))  # (b, C)
    values, indices = torch.cat(chunks).topk(min(topk, len(loaded.classes)), dim=1)
    return [
        [(loaded.classes[i], float(v)) for v, i in zip(row_v, row_i, strict=True)]
        for row_v, row_i in zip(values.tolist(), indices.tolist(), strict=True)
    ]
