"""Models, datasets and loaders built from a :class:`~vimtune.engine.config.RunConfig`."""

from __future__ import annotations

from pathlib import Path

import timm
from torch import nn
from torch.utils.data import DataLoader, Dataset

import vimtune.models  # noqa: F401 - registers the Vim configs with timm
from vimtune.data import build_dataset, build_eval_transform, build_loader, build_train_transform, has_split
from vimtune.engine.config import DataConfig, ModelConfig
from vimtune.engine.distributed import DistContext
from vimtune.engine.evaluate import build_eval_loader
from vimtune.engine.trainable import Trainable, WholeModel
from vimtune.methods import build
from vimtune.models import load_checkpoint
from vimtune.models.spec_check import check_model_spec

#: Evaluation roles and the DataConfig field naming each one's split.
EVAL_ROLES = {"val": "val_split", "test": "test_split"}


def build_model(cfg: ModelConfig, num_classes: int, backbone_file: Path | None) -> tuple[nn.Module, Trainable]:
    """Create ``cfg.name`` with a ``num_classes`` head, load ``backbone_file``, attach the method.

    ``backbone_file`` is the file ``cfg.backbone_weights`` names, already checked (see
    :mod:`vimtune.engine.run_record`); ``None`` keeps the fresh initialisation.

    Returns:
        The model and what trains in it: the method, or :class:`WholeModel` without one.

    Raises:
        ValueError: a model name or constructor argument outside the known configurations (checked
            before anything is allocated).
        vimtune.models.CheckpointError: backbone weights that do not fit the architecture.
    """
    return attach_method(build_backbone(cfg, num_classes, backbone_file), cfg, num_classes)


def build_backbone(cfg: ModelConfig, num_classes: int, backbone_file: Path | None) -> nn.Module:
    """``cfg.name`` with a ``num_classes`` head and ``backbone_file``'s weights (if given), no method."""
    check_model_spec(cfg.name, cfg.kwargs)
    model = timm.create_model(cfg.name, num_classes=num_classes, **cfg.kwargs)
    if backbone_file is not None:
        load_checkpoint(model, backbone_file, strict=True, allow_stride_change=cfg.allow_stride_change)
    return model


def attach_method(model: nn.Module, cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, Trainable]:
    """Attach ``cfg.method`` to ``model``; returns the model and what trains in it."""
    if cfg.method is None:
        return model, WholeModel()
    try:
        method = build(cfg.method, **cfg.method_options)
    except TypeError as err:  # unknown option or wrong type: a configuration error
        raise ValueError(f"model.method_options: {err}") from err
    return method.attach(model, num_classes=num_classes), method


def split_name(cfg: DataConfig, role: str) -> str | None:
    """The split used for ``role`` (``train``, ``val`` or ``test``), ``None`` when unset.

    A ``val`` split that the dataset kind cannot have (CIFAR) counts as unset: see
    :func:`missing_val_note`.
    """
    if role == "train":
        return cfg.train_split
    split = getattr(cfg, EVAL_ROLES[role])
    return None if role == "val" and split and not has_split(cfg.kind, split) else split


def missing_val_note(cfg: DataConfig) -> str | None:
    """A note when ``data.val_split`` names a split the dataset kind has not (else ``None``)."""
    if cfg.val_split and split_name(cfg, "val") is None:
        return (f"note: {cfg.kind} has no {cfg.val_split!r} split: no per-epoch validation, results use "
                "protocol 'last' (set data.val_split=null to silence this note)")
    return None


def build_split(cfg: DataConfig, role: str) -> Dataset:
    """The dataset of ``role`` with its transform (training augmentation for ``train``)."""
    split = split_name(cfg, role)
    if cfg.root is None:
        raise ValueError("no dataset given: set data.root (--data ROOT)")
    if split is None:
        raise ValueError(f"no {role} split configured (data.{EVAL_ROLES.get(role, 'train_split')})")
    transform = build_train_transform(cfg.augment) if role == "train" else build_eval_transform(cfg.augment)
    return build_dataset(cfg.kind, cfg.root, split, transform=transform, skip_bad_images=cfg.skip_bad_images,
                         allow_outside_root=cfg.allow_outside_root)


def build_train_loader(dataset: Dataset, cfg: DataConfig, ctx: DistContext, seed: int) -> DataLoader:
    """Shuffled training loader (a ``DistributedSampler`` under torchrun) with full batches only."""
    per_process = len(dataset) // ctx.world_size
    if per_process < cfg.batch_size:
        raise ValueError(
            f"the training split has {len(dataset)} images: fewer than one batch of {cfg.batch_size} "
            f"per process ({ctx.world_size} processes); lower data.batch_size"
        )
    return build_loader(dataset, cfg.batch_size, train=True, num_workers=cfg.num_workers,
                        distributed=ctx.distributed, seed=seed)


def build_eval_loaders(
    cfg: DataConfig, roles: list[str], ctx: DistContext
) -> tuple[dict[str, DataLoader], dict[str, Dataset]]:
    """Evaluation loaders (sharded over processes) and datasets for each role in ``roles``."""
    datasets = {role: build_split(cfg, role) for role in roles}
    batch = cfg.eval_batch_size or cfg.batch_size
    loaders = {role: build_eval_loader(ds, batch, cfg.num_workers, ctx) for role, ds in datasets.items()}
    return loaders, datasets
