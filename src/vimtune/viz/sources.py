"""The models and images ``vimtune viz`` draws: a run folder's or a stand-alone file's model, its plain backbone,
and image files prepared as the model sees them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vimtune.data import AugmentConfig, build_eval_transform, load_rgb
from vimtune.engine.builder import build_model
from vimtune.engine.config import ModelConfig, build_config
from vimtune.engine.inference import load_run, load_weights_file
from vimtune.engine.run_dir import RunFiles
from vimtune.engine.run_record import recorded_backbone_file
from vimtune.methods import read_adapter_config
from vimtune.methods.artifacts import adapter_backbone_file
from vimtune.models import read_state_dict
from vimtune.models.provenance import local_weights_file
from vimtune.models.vim import VisionMamba
from vimtune.viz.pictures import displayable


@dataclass
class VizSource:
    """A model to draw, its plain backbone (None when unknown), its method's name and its input transform."""

    model: VisionMamba
    plain: VisionMamba | None
    method: str
    augment: AugmentConfig


def _plain_backbone(name: str, kwargs: dict, weights_file: Path | None, num_classes: int) -> VisionMamba | None:
    """The backbone alone, from its (already checked) weights file; None without one (nothing to compare with)."""
    if weights_file is None:
        return None
    model, _ = build_model(ModelConfig(name=name, kwargs=dict(kwargs)), num_classes, weights_file)
    return model.eval()


def from_run(run_dir: str | Path, protocol: str | None = None, backbone_weights: str | None = None) -> VizSource:
    """The model of a run folder (weights chosen by ``protocol``) and, for a fine-tuning run, its backbone.

    ``backbone_weights`` names the backbone file when it is no longer where the run recorded it (checked by
    SHA-256, as ``vimtune eval --backbone-weights``).
    """
    overrides = [("model.backbone_weights", backbone_weights)] if backbone_weights else []
    loaded = load_run(run_dir, protocol, overrides)
    model_cfg = loaded.cfg.model
    plain = None
    if model_cfg.method is not None:
        weights_file = recorded_backbone_file(model_cfg, RunFiles(Path(run_dir)))
        plain = _plain_backbone(model_cfg.name, model_cfg.kwargs, weights_file, len(loaded.classes))
    return VizSource(loaded.model, plain, model_cfg.method or "trained from scratch", loaded.cfg.data.augment)


def from_checkpoint(path: str | Path, model_name: str | None, backbone_weights: str | None,
                    img_size: int | None) -> VizSource:
    """An adapter folder (with the backbone weights it was trained on) or full-model weights (``model_name``).

    Raises:
        ValueError: full-model weights without ``model_name``, or without a ``head.weight`` to size the head.
    """
    path = Path(path)
    if path.is_dir():
        config = read_adapter_config(path)
        backbone = config["backbone"]
        cfg = build_config({}, [("model.name", backbone["name"]), ("model.kwargs", backbone["kwargs"]),
                                ("model.backbone_weights", backbone_weights)])
        loaded = load_weights_file(path, cfg, [str(i) for i in range(config["num_classes"])])
        weights_file = adapter_backbone_file(path, backbone.get("weights"), backbone_weights)
        plain = _plain_backbone(backbone["name"], backbone["kwargs"], weights_file, config["num_classes"])
        method = config["method"]["name"]
    else:
        if model_name is None:
            raise ValueError(f"'{path}' holds full-model weights: name the architecture with --model")
        head = read_state_dict(path).get("head.weight")
        if head is None:
            raise ValueError(f"'{path}' has no head.weight: cannot tell its number of classes")
        cfg = build_config({}, [("model.name", model_name)])
        loaded = load_weights_file(path, cfg, [str(i) for i in range(head.shape[0])])
        weights_file = local_weights_file(backbone_weights) if backbone_weights else None
        plain = _plain_backbone(model_name, {}, weights_file, head.shape[0])
        method = "full model"
    size = img_size or loaded.model.img_size[0]
    return VizSource(loaded.model, plain, method, AugmentConfig(recipe="none", img_size=size))


def load_images(paths: Sequence[str | Path], augment: AugmentConfig) -> tuple[Tensor, list[np.ndarray]]:
    """Image files -> the model's inputs (N, 3, H, W) and the same pixels for display (N arrays (H, W, 3) in 0..1).

    Raises:
        vimtune.data.BadImageError: a file that is missing or not an image (the message names it).
    """
    transform = build_eval_transform(augment)
    images = torch.stack([transform(load_rgb(p)) for p in paths])
    resolved = augment.resolved()
    return images, displayable(images, resolved.mean, resolved.std)
