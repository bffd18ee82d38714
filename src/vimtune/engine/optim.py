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
#: ``optim.sched`` names: timm's schedulers that need no metric, and ``const`` for timm's ``constant``.
SCHEDULES = ("cosine", "tanh", "step", "multistep", "poly", "wsd", "rsqrt", "constant", "const")
#: A peak learning rate below this is reported as tiny at the start of a run.
TINY_LR = 1e-5


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

    Raises:
        ValueError: an ``optim.sched`` not in :data:`SCHEDULES`.
    """
    if cfg.sched not in SCHEDULES:
        raise ValueError(f"optim.sched={cfg.sched!r}: expected one of {', '.join(SCHEDULES)}")
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="constant" if cfg.sched == "const" else cfg.sched,
        num_epochs=epochs,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs,
        step_on_epochs=not cfg.step_on_updates,
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def describe_schedule(base: OptimConfig, scaled: OptimConfig, global_batch: int, epochs: int,
                      updates_per_epoch: int) -> tuple[str, list[str]]:
    """A one-line summary of the effective learning-rate schedule, and warnings about it.

    Warns when the warmup covers at least half of the run (the line then gives the highest lr the
    run actually reaches) and when the peak lr after batch scaling is below :data:`TINY_LR`.

    Args:
        base: the configured ``optim`` section.
        scaled: ``base`` after :func:`scale_lrs`.
        global_batch: images per optimizer update over all processes.
        epochs: ``train.epochs``.
        updates_per_epoch: optimizer updates per epoch.
    """
    per = updates_per_epoch if scaled.step_on_updates else 1  # schedule steps per epoch
    warmup_t, last_t = scaled.warmup_epochs * per, epochs * per - 1
    reached = scaled.lr if last_t >= warmup_t else (
        scaled.warmup_lr + last_t * (scaled.lr - scaled.warmup_lr) / warmup_t)
    scaling = (f" (base {base.lr:.3g} x global batch {global_batch} / {REFERENCE_BATCH})" if scaled.scale_lr
               else " (not scaled by batch)")
    line = (f"lr schedule: {scaled.sched}, peak lr {scaled.lr:.3g}{scaling}, warmup {scaled.warmup_epochs} epochs "
            f"({scaled.warmup_epochs * updates_per_epoch} updates) from {scaled.warmup_lr:.3g}, "
            f"{epochs} epochs = {epochs * updates_per_epoch} updates, min lr {scaled.min_lr:.3g}")
    warnings = []
    if epochs > 0 and scaled.warmup_epochs >= epochs / 2:
        warnings.append(
            f"warning: the warmup ({scaled.warmup_epochs} epochs) covers "
            f"{min(100.0, 100 * scaled.warmup_epochs / epochs):.0f}% of the {epochs}-epoch run; the highest lr "
            f"reached is {reached:.3g}. Lower optim.warmup_epochs (--set optim.warmup_epochs=N) or train longer")
    if scaled.lr < TINY_LR:
        warnings.append(
            f"warning: the peak lr {scaled.lr:.3g} is tiny{scaling}; raise --lr"
            + (" or set optim.scale_lr=false" if scaled.scale_lr else ""))
    return line, warnings
