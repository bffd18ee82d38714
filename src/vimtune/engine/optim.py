"""Optimizer (timm's, with weight-decay exclusions) and warmup + cosine schedule."""

from __future__ import annotations

import dataclasses

from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from torch import nn
from torch.optim import Optimizer

from vimtune.engine.config import OptimConfig
from vimtune.engine.trainable import Trainable

REFERENCE_BATCH = 512


def scale_lrs(cfg: OptimConfig, global_batch: int) -> OptimConfig:
    """``cfg`` with ``lr``, ``warmup_lr`` and ``min_lr`` times ``global_batch / 512`` when ``scale_lr``."""
    if not cfg.scale_lr:
        return cfg
    factor = global_batch / REFERENCE_BATCH
    return dataclasses.replace(cfg, lr=cfg.lr * factor, warmup_lr=cfg.warmup_lr * factor, min_lr=cfg.min_lr * factor)


def no_weight_decay_names(model: nn.Module, trainable: Trainable) -> set[str]:
    """Names (or fnmatch patterns) excluded from weight decay: the model's and the method's."""
    own = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    return set(own) | set(trainable.no_weight_decay_names(model))


def build_optimizer(model: nn.Module, trainable: Trainable, cfg: OptimConfig) -> Optimizer:
    """Optimizer over the trainable parameters of ``model`` (already lr-scaled ``cfg``).

    1-D parameters (norm weights), biases and :func:`no_weight_decay_names` take no weight decay.
    Only parameters with ``requires_grad`` are optimised; they must be exactly the trainable ones.
    """
    expected = {name for name, _ in trainable.trainable_parameters(model)}
    requiring = {name for name, p in model.named_parameters() if p.requires_grad}
    if expected != requiring:
        raise RuntimeError(
            "trainable parameters and requires_grad disagree: "
            f"{sorted(expected ^ requiring)[:10]}"
        )
    if not expected:
        raise RuntimeError("the model has no trainable parameters")
    excluded = no_weight_decay_names(model, trainable)
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=excluded)
    return create_optimizer_v2(groups, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: Optimizer, cfg: OptimConfig, epochs: int, updates_per_epoch: int) -> Scheduler:
    """timm scheduler: ``warmup_epochs`` linear warmup then ``cfg.sched`` decay to ``min_lr``.

    Call ``scheduler.step(epoch)`` at every epoch start and, with ``step_on_updates``,
    ``scheduler.step_update(global_step)`` after every optimizer update.
    """
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=epochs,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs,
        step_on_epochs=not cfg.step_on_updates,
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler
