"""The epoch loop: train, evaluate, keep the best weights, checkpoint, log, resume."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from vimtune.data import set_loader_epoch
from vimtune.engine.checkpoint import (
    bytes_to_tensor,
    capture_rng_state,
    load_checkpoint_state,
    restore_rng_state,
    save_checkpoint,
    save_weights,
    tensor_to_bytes,
)
from vimtune.engine.config import RunConfig, to_dict, write_yaml
from vimtune.engine.distributed import DistContext, all_gather_object, barrier, broadcast_object
from vimtune.engine.evaluate import evaluate
from vimtune.engine.logger import RunLogger
from vimtune.engine.loop import EpochRunner, NonFiniteLossError, build_criterion
from vimtune.engine.optim import build_optimizer, build_scheduler, scale_lrs
from vimtune.engine.plots import save_curves_png
from vimtune.engine.run_dir import RunFiles
from vimtune.engine.trainable import Trainable


@dataclass
class TrainState:
    """Progress saved in the checkpoint.

    Attributes:
        epoch: epochs finished.
        global_step: optimizer updates done.
        best: per evaluation role (``val``/``test``), ``{"epoch", "top1"}`` of its best epoch.
        history: the per-epoch records written to ``metrics.jsonl``.
    """

    epoch: int = 0
    global_step: int = 0
    best: dict[str, dict[str, float]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Trains ``model`` for ``cfg.train.epochs`` epochs, resuming from ``files.checkpoint`` if present.

    Args:
        model: the network (not yet wrapped or moved); only ``trainable``'s parameters train.
        trainable: which parameters train and how their state is saved.
        cfg: the run configuration.
        train_loader: training batches (images (B, 3, H, W), labels (B,)).
        eval_loaders: loaders evaluated after every epoch, keyed by role (``val``, ``test``).
        num_classes: number of classes.
        files: the run folder (only rank 0 writes to it).
        ctx: this process's rank and device.
        mixup: batch mixing, or ``None``.
    """

    def __init__(
        self,
        model: nn.Module,
        trainable: Trainable,
        cfg: RunConfig,
        train_loader: DataLoader,
        eval_loaders: dict[str, DataLoader],
        num_classes: int,
        files: RunFiles,
        ctx: DistContext,
        mixup: Mixup | None = None,
    ) -> None:
        self.model = model.to(ctx.device)
        self.trainable = trainable
        self.cfg = cfg
        self.train_loader = train_loader
        self.eval_loaders = eval_loaders
        self.num_classes = num_classes
        self.files = files
        self.ctx = ctx
        self.mixup = mixup
        self.global_batch = cfg.data.batch_size * ctx.world_size * cfg.optim.accum_steps
        self.optim_cfg = scale_lrs(cfg.optim, self.global_batch)
        self.optimizer = build_optimizer(self.model, trainable, self.optim_cfg)
        self.updates_per_epoch = math.ceil(len(train_loader) / cfg.optim.accum_steps)
        self.scheduler = build_scheduler(self.optimizer, self.optim_cfg, cfg.train.epochs, self.updates_per_epoch)
        self.ema: ModelEmaV3 | None = None
        self.state = TrainState()

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the EMA when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def fit(self) -> TrainState:
        """Run the epochs after :attr:`state` (see :meth:`resume`); returns the final state.

        Raises:
            NonFiniteLossError: NaN/inf loss; the last checkpoint on disk is left as it was.
        """
        model = self._wrap()  # DDP makes the weights of every process those of rank 0 ...
        if self.cfg.train.ema and self.ema is None:  # ... before the EMA copies them
            self.ema = ModelEmaV3(self.model, decay=self.cfg.train.ema_decay)
        runner = EpochRunner(
            model=model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            criterion=build_criterion(self.mixup, self.cfg.data.augment.resolved().smoothing),
            ctx=self.ctx,
            accum_steps=self.cfg.optim.accum_steps,
            clip_grad=self.optim_cfg.clip_grad,
            bf16=self.cfg.train.bf16,
            mixup=self.mixup,
            ema=self.ema,
        )
        logger = RunLogger(self.files, self.state.history) if self.ctx.is_main else None
        try:
            for epoch in range(self.state.epoch, self.cfg.train.epochs):
                self._run_epoch(runner, epoch, logger)
            if self.ctx.is_main:
                save_weights(self.files.weights("last"), self.trainable.trainable_state(self.eval_model),
                             {"epoch": self.state.epoch})
        finally:
            if logger is not None:
                logger.close()
        barrier(self.ctx)
        return self.state

    def _wrap(self) -> nn.Module:
        if not self.ctx.distributed:
            return self.model
        device_ids = [self.ctx.device] if self.ctx.device.type == "cuda" else None
        return DistributedDataParallel(
            self.model, device_ids=device_ids, find_unused_parameters=self.cfg.train.find_unused_parameters
        )

    def _run_epoch(self, runner: EpochRunner, epoch: int, logger: RunLogger | None) -> None:
        start = time.perf_counter()
        self.scheduler.step(epoch)
        set_loader_epoch(self.train_loader, epoch)
        try:
            global_step, loss, train_top1 = runner.run(self.train_loader, epoch, self.cfg.train.epochs,
                                                       self.state.global_step)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"{err}. {self._kept_checkpoint()}") from None
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "global_step": global_step,
            "lr": max(group["lr"] for group in self.optimizer.param_groups),
            "train_loss": loss,
            **({"train_top1": train_top1} if train_top1 is not None else {}),
        }
        for role, loader in self.eval_loaders.items():
            summary = evaluate(self.eval_model, loader, self.num_classes, self.ctx, self.cfg.train.bf16,
                               desc=role).summary()
            record.update({f"{role}_{k}": summary[k] for k in ("top1", "top5", "loss")})
        record["epoch_time"] = time.perf_counter() - start
        self.state.epoch, self.state.global_step = epoch + 1, global_step
        self.state.history.append(record)
        generator = self.train_loader.generator
        loader_rng = tensor_to_bytes(generator.get_state()) if generator is not None else None
        rng = all_gather_object({**capture_rng_state(), "loader": loader_rng}, self.ctx)
        if self.ctx.is_main:
            self._save_best(record)
            self._save_checkpoint(rng)
            logger.log_epoch(record)
            save_curves_png(self.state.history, self.files.curves, title=self.files.root.name)
        barrier(self.ctx)

    def _save_best(self, record: dict[str, Any]) -> None:
        """Keep the weights of the best epoch so far of every evaluated role."""
        for role in self.eval_loaders:
            top1 = record[f"{role}_top1"]
            if top1 > self.state.best.get(role, {"top1": -1.0})["top1"]:
                self.state.best[role] = {"epoch": record["epoch"], "top1": top1}
                save_weights(self.files.weights(f"best_{role}"), self.trainable.trainable_state(self.eval_model),
                             {"epoch": record["epoch"], f"{role}_top1": top1})

    def _save_checkpoint(self, rng: list[dict[str, Any]]) -> None:
        """Write ``checkpoint.pt``, then ``config.yaml``: a resumed run's new settings (e.g. ``--lr``)
        replace the old ones only once an epoch under them has finished."""
        save_checkpoint(self.files.checkpoint, {
            "epoch": self.state.epoch,
            "global_step": self.state.global_step,
            "best": self.state.best,
            "history": self.state.history,
            "model": self.trainable.trainable_state(self.model),
            "ema": self.trainable.trainable_state(self.ema.module) if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "config": to_dict(self.cfg),
        })
        write_yaml(self.cfg, self.files.config)

    def resume(self) -> bool:
        """Restore the state of ``files.checkpoint`` if it exists; returns whether it did.

        Restores the trainable weights, the optimizer, the learning rate, the EMA, RNG streams,
        counters and history. Reads only: a checkpoint that does not fit raises before anything
        is written.
        """
        found = self.files.checkpoint.is_file() if self.ctx.is_main else None
        if not broadcast_object(found, self.ctx):
            return False
        checkpoint = load_checkpoint_state(self.files.checkpoint) if self.ctx.is_main else None
        checkpoint = broadcast_object(checkpoint, self.ctx)  # the run folder may exist on rank 0 only
        self.trainable.load_trainable_state(self.model, checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        # the schedule is a function of (epoch, update): re-planned from the config, so that
        # train.epochs may be raised on resume
        self.scheduler.step_update(num_updates=checkpoint["global_step"])
        rng = checkpoint["rng"]
        if len(rng) == self.ctx.world_size:  # another process count: fresh RNG streams, same weights
            restore_rng_state(rng[self.ctx.rank])
            if self.train_loader.generator is not None and rng[self.ctx.rank]["loader"] is not None:
                self.train_loader.generator.set_state(bytes_to_tensor(rng[self.ctx.rank]["loader"]))
        if self.cfg.train.ema:  # an EMA switched on at resume starts from the current weights
            self.ema = ModelEmaV3(self.model, decay=self.cfg.train.ema_decay)
            if checkpoint["ema"] is not None:
                self.trainable.load_trainable_state(self.ema.module, checkpoint["ema"])
        self.state = TrainState(checkpoint["epoch"], checkpoint["global_step"], checkpoint["best"],
                                checkpoint["history"])
        return True

    def _kept_checkpoint(self) -> str:
        if self.state.epoch == 0:
            return "No checkpoint had been written yet (the first epoch did not finish)"
        return (f"The last good checkpoint '{self.files.checkpoint}' (epoch {self.state.epoch}) is unchanged; "
                "lower optim.lr or set optim.clip_grad, then continue with --resume")
