"""One training epoch: forward, loss, backward with accumulation, clipping, update, EMA, schedule."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.distributed import ReduceOp
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from tqdm import tqdm

from vimtune.engine.distributed import DistContext, all_reduce


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops before applying that update."""


def build_criterion(mixup: Mixup | None, smoothing: float) -> nn.Module:
    """Soft-target cross-entropy with Mixup/CutMix (smoothing is in the mixed targets), else CE."""
    if mixup is not None:
        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=smoothing)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@dataclass
class EpochRunner:
    """Runs training epochs over a loader.

    Attributes:
        model: the model, wrapped in ``DistributedDataParallel`` when distributed.
        optimizer, scheduler: see :mod:`vimtune.engine.optim`.
        criterion: loss of (logits (B, C), targets (B,) or soft targets (B, C)).
        ctx: this process's rank and device.
        accum_steps: batches per optimizer update. Each update follows the mean loss over the batches of
            its group; the last group of an epoch may hold fewer (when the epoch's batch count is not a
            multiple of ``accum_steps``), and its mean is over the batches it holds, so that with equal
            batch sizes every update is that of one batch of the group's samples.
        clip_grad: gradient-norm clipping threshold (``None``: none).
        bf16: bfloat16 autocast for the forward pass.
        mixup: batch mixing applied to (images, labels).
        ema: weight average updated after every optimizer update.
    """

    model: nn.Module
    optimizer: Optimizer
    scheduler: Scheduler
    criterion: nn.Module
    ctx: DistContext
    accum_steps: int = 1
    clip_grad: float | None = None
    bf16: bool = False
    mixup: Mixup | None = None
    ema: ModelEmaV3 | None = None

    def run(self, loader: DataLoader, epoch: int, epochs: int, global_step: int) -> tuple[int, float, float | None]:
        """Train one epoch (0-based ``epoch``); returns the new global step, the mean loss and the training top-1
        (%, of the running weights in train mode; None under Mixup/CutMix, whose targets are mixed).

        Raises:
            NonFiniteLossError: a NaN/inf loss on any process, before its update is applied.
        """
        self.model.train()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        loss_sum = torch.zeros(3, dtype=torch.float64)  # (summed loss, samples, correct top-1)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not self.ctx.is_main)
        steps = len(loader)
        for step, (images, targets) in enumerate(bar):
            images = images.to(self.ctx.device, non_blocking=True)
            targets = targets.to(self.ctx.device, non_blocking=True)
            if self.mixup is not None:
                images, targets = self.mixup(images, targets)
            group_start = step - step % self.accum_steps
            group_size = min(self.accum_steps, steps - group_start)  # batches in this step's group
            last_of_group = step + 1 == group_start + group_size
            sync = contextlib.nullcontext()
            if isinstance(self.model, DistributedDataParallel) and not last_of_group:
                sync = self.model.no_sync()
            with sync:
                with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    logits = self.model(images)
                # the loss in float32 at least (bfloat16 logits under autocast), float64 for a float64 model
                loss = self.criterion(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets)
                self._check_finite(loss, epoch, step, steps, global_step)
                (loss / group_size).backward()
            value = float(loss.detach())
            correct = float((logits.detach().argmax(dim=1) == targets).sum()) if targets.dim() == 1 else 0.0
            loss_sum += torch.tensor([value * len(images), len(images), correct], dtype=torch.float64)
            if last_of_group:
                if self.clip_grad is not None:
                    nn.utils.clip_grad_norm_(params, self.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                global_step += 1
                if self.ema is not None:
                    self.ema.update(unwrap(self.model), step=global_step)
                self.scheduler.step_update(num_updates=global_step)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.3g}")
        all_reduce(loss_sum, self.ctx)
        samples = loss_sum[1].clamp(min=1)
        top1 = None if self.mixup is not None else float(100 * loss_sum[2] / samples)
        return global_step, float(loss_sum[0] / samples), top1

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int, steps: int, global_step: int) -> None:
        finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
        all_reduce(finite, self.ctx, op=ReduceOp.MIN)
        if not bool(finite):
            raise NonFiniteLossError(
                f"training loss is {float(loss.detach())} (or non-finite on another process) at epoch {epoch + 1}, "
                f"step {step + 1}/{steps} (after {global_step} optimizer updates); training stopped"
            )
