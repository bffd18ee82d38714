"""``run_training``: a whole training or fine-tuning run from a :class:`RunConfig`."""

from __future__ import annotations

import json
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch.distributed as dist
from timm.utils import random_seed
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from vimtune.data import build_mixup
from vimtune.engine.builder import (
    attach_method,
    build_backbone,
    build_eval_loaders,
    build_split,
    build_train_loader,
    missing_val_note,
    split_name,
)
from vimtune.engine.checkpoint import atomic_write_text, save_weights
from vimtune.engine.config import ModelConfig, RunConfig, build_config, read_yaml, to_dict, write_yaml
from vimtune.engine.distributed import DistContext, barrier, init_distributed, shutdown_distributed
from vimtune.engine.html_report import write_report
from vimtune.engine.optim import describe_schedule
from vimtune.engine.report import format_results, protocol_results
from vimtune.engine.run_dir import RunFiles, prepare_run_dir
from vimtune.engine.run_lock import run_lock
from vimtune.engine.run_record import (
    backbone_record,
    random_source,
    read_run_record,
    run_backbone_file,
    write_run_record,
)
from vimtune.engine.trainer import Trainer
from vimtune.methods import Method, save_adapter
from vimtune.models.provenance import BACKBONE_FILE
from vimtune.models.spec_check import check_model_spec


def load_run_config(run_dir: str | Path, overrides: list[tuple[str, Any]] = ()) -> RunConfig:
    """The ``config.yaml`` of a run folder with ``overrides`` applied (``output_dir`` kept)."""
    files = RunFiles(Path(run_dir))
    if not files.config.is_file():
        raise FileNotFoundError(f"'{run_dir}' is not a run folder: '{files.config}' is missing")
    return build_config(read_yaml(files.config), [*overrides, ("output_dir", str(run_dir))])


def save_run_adapter(model: nn.Module, method: Method, files: RunFiles, cfg: ModelConfig) -> None:
    """Export the run's final weights to ``RUN/adapter`` with the backbone record of ``run.json``.

    A stored random backbone is copied into the adapter folder too, so the adapter stands alone.
    """
    record = read_run_record(files)
    weights = record["backbone"] if record is not None else None
    files.adapter.mkdir(exist_ok=True)
    if weights is not None and "file" in weights:
        shutil.copyfile(files.root / weights["file"], files.adapter / BACKBONE_FILE)
        weights = {**weights, "file": BACKBONE_FILE}
    save_adapter(model, method, files.adapter, backbone={"name": cfg.name, "kwargs": cfg.kwargs, "weights": weights})


def _check_same_classes(train: Dataset, others: dict[str, Dataset]) -> None:
    for role, dataset in others.items():
        if list(dataset.classes) != list(train.classes):
            raise ValueError(
                f"the {role} split has classes {dataset.classes[:10]} but the training split has "
                f"{train.classes[:10]}: every split needs the same classes in the same order"
            )


def run_inputs(cfg: RunConfig) -> dict[str, str | None]:
    """The files and folders a run reads, by what they are (for the ``--overwrite`` check)."""
    return {"--backbone-weights file": cfg.model.backbone_weights, "--data folder": cfg.data.root}


def nothing_to_train_note(files: RunFiles, done: int, epochs: int) -> str:
    """The line a resumed run prints when ``train.epochs`` (``epochs``) is not above the ``done`` epochs."""
    return (f"nothing to train: run '{files.root}' is at epoch {done} and train.epochs is {epochs}; "
            f"only its final test and report are redone (pass --epochs above {done} to train more)")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says where the last checkpoint is."""


def run_training(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train per ``cfg``, under ``torchrun`` too; returns the contents of ``final_metrics.json``.

    Everything that can fail on the inputs (data, model, backbone weights) is checked before the
    run folder is written to. With ``resume`` the run continues from ``checkpoint.pt`` when there
    is one (or starts in the existing folder when the first epoch never finished). Rank 0 holds
    the run folder's lock (:mod:`vimtune.engine.run_lock`) from the first check to the end.

    Raises:
        RunInterrupted: Ctrl-C (its message names the last checkpoint).
    """
    owns_group = not (dist.is_available() and dist.is_initialized())
    ctx = init_distributed(cfg.train.device)
    files = RunFiles(cfg.run_dir())
    try:
        with ExitStack() as held:
            if ctx.is_main:
                prepare_run_dir(files.root, resume, overwrite, create=False,  # writes nothing to a foreign folder
                                inputs=run_inputs(cfg))
                if files.root.is_dir():
                    held.enter_context(run_lock(files.root))  # a second process on the run stops here
            return _run(cfg, ctx, files, resume, overwrite, held)
    except KeyboardInterrupt:
        raise RunInterrupted(interrupted_message(files)) from None
    finally:
        if owns_group:
            shutdown_distributed()


def interrupted_message(files: RunFiles) -> str:
    """Where a stopped run can continue from."""
    if not files.checkpoint.is_file():
        return f"interrupted before the first epoch finished: no checkpoint in '{files.root}'"
    epochs = len(files.read_history())
    return (f"interrupted: the last checkpoint is '{files.checkpoint}' ({epochs} epochs done); "
            f"continue with --output-dir {files.root} --resume")


def _run(cfg: RunConfig, ctx: DistContext, files: RunFiles, resume: bool, overwrite: bool,
         held: ExitStack) -> dict[str, Any]:
    check_model_spec(cfg.model.name, cfg.model.kwargs)  # before any data is read or memory allocated
    backbone_file = run_backbone_file(cfg.model, files, resume)
    random_seed(cfg.train.seed)  # the same initial weights on every process
    train_set = build_split(cfg.data, "train")
    roles = [r for r in ("val", "test") if split_name(cfg.data, r) and (r == "val" or cfg.train.test_every_epoch)]
    final_role = ["test"] if split_name(cfg.data, "test") and "test" not in roles else []
    loaders, datasets = build_eval_loaders(cfg.data, roles + final_role, ctx)
    _check_same_classes(train_set, datasets)
    backbone = build_backbone(cfg.model, train_set.num_classes, backbone_file)
    random_init = backbone_file is None and cfg.model.random_backbone
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()} if random_init else None
    model, trainable = attach_method(backbone, cfg.model, train_set.num_classes)
    train_loader = build_train_loader(train_set, cfg.data, ctx, cfg.train.seed)
    random_seed(cfg.train.seed, ctx.rank)  # then an augmentation stream of its own
    trainer = Trainer(
        model, trainable, cfg, train_loader, {r: loaders[r] for r in roles}, train_set.num_classes, files, ctx,
        mixup=build_mixup(cfg.data.augment, train_set.num_classes),
    )
    resumed = resume and trainer.resume()
    if ctx.is_main:
        if not files.root.is_dir():
            files.root.mkdir(parents=True)
            held.enter_context(run_lock(files.root))
        prepare_run_dir(files.root, resume, overwrite, create=True, inputs=run_inputs(cfg))
        if not files.record.is_file() and not resumed:
            if frozen is not None:
                save_weights(files.backbone, frozen, {"source": random_source(cfg.train.seed)})
            write_run_record(files, backbone_record(cfg.model, files, cfg.train.seed))
        if not resumed:  # a resumed run's settings are written with its first checkpoint
            write_yaml(cfg, files.config)
        atomic_write_text(files.classes, json.dumps(list(train_set.classes)))
        start = f"resuming after epoch {trainer.state.epoch}" if resumed else "starting"
        tqdm.write(f"run folder {files.root}: {start} ({len(train_set)} training images, "
                   f"{train_set.num_classes} classes, {ctx.world_size} process(es) x batch {cfg.data.batch_size})")
        if resumed and trainer.state.epoch >= cfg.train.epochs:
            tqdm.write(nothing_to_train_note(files, trainer.state.epoch, cfg.train.epochs), file=sys.stderr)
        else:
            line, warnings = describe_schedule(cfg.optim, trainer.optim_cfg, trainer.global_batch,
                                               cfg.train.epochs, trainer.updates_per_epoch)
            tqdm.write(line)
            for message in [*warnings, missing_val_note(cfg.data)]:
                if message:
                    tqdm.write(message, file=sys.stderr)
    barrier(ctx)
    state = trainer.fit()
    if ctx.is_main and cfg.model.method is not None:
        save_run_adapter(trainer.eval_model, trainable, files, cfg.model)
    final: dict[str, Any] = {
        "epochs": state.epoch,
        "global_step": state.global_step,
        "trainable_params": sum(p.numel() for _, p in trainable.trainable_parameters(trainer.model)),
        "total_params": sum(p.numel() for p in trainer.model.parameters()),
        "protocols": {},
    }
    if "test" in loaders:
        final["protocols"] = protocol_results(
            trainer.eval_model, trainable, files, state.history, loaders["test"], list(train_set.classes),
            cfg.data.test_split, ctx, cfg.train.bf16,
        )
    if ctx.is_main:
        atomic_write_text(files.final_metrics, json.dumps({**final, "config": to_dict(cfg)}, indent=2))
        tqdm.write(f"wrote {write_report(files)}")
        tqdm.write(format_results(final["protocols"]) or "no test split configured: nothing tested")
    barrier(ctx)
    return final
