"""``run_training``: a whole training or fine-tuning run from a :class:`RunConfig`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.distributed as dist
from timm.utils import random_seed
from torch.utils.data import Dataset
from tqdm import tqdm

from vimtune.data import build_mixup
from vimtune.engine.builder import build_eval_loaders, build_model, build_split, build_train_loader, split_name
from vimtune.engine.checkpoint import atomic_write_text
from vimtune.engine.config import RunConfig, build_config, read_yaml, to_dict, write_yaml
from vimtune.engine.distributed import DistContext, barrier, init_distributed, shutdown_distributed
from vimtune.engine.html_report import write_report
from vimtune.engine.report import format_results, protocol_results
from vimtune.engine.run_dir import RunFiles, prepare_run_dir
from vimtune.engine.trainer import Trainer
from vimtune.methods import save_adapter


def load_run_config(run_dir: str | Path, overrides: list[tuple[str, Any]] = ()) -> RunConfig:
    """The ``config.yaml`` of a run folder with ``overrides`` applied (``output_dir`` kept)."""
    files = RunFiles(Path(run_dir))
    if not files.config.is_file():
        raise FileNotFoundError(f"'{run_dir}' is not a run folder: '{files.config}' is missing")
    return build_config(read_yaml(files.config), [*overrides, ("output_dir", str(run_dir))])


def _check_same_classes(train: Dataset, others: dict[str, Dataset]) -> None:
    for role, dataset in others.items():
        if list(dataset.classes) != list(train.classes):
            raise ValueError(
                f"the {role} split has classes {dataset.classes[:10]} but the training split has "
                f"{train.classes[:10]}: every split needs the same classes in the same order"
            )


def run_training(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train per ``cfg``, under ``torchrun`` too; returns the contents of ``final_metrics.json``.

    Everything that can fail on the inputs (data, model, backbone weights) is checked before the
    run folder is touched. With ``resume`` the run continues from ``checkpoint.pt`` when there is
    one (or starts in the existing folder when the first epoch never finished).
    """
    owns_group = not (dist.is_available() and dist.is_initialized())
    ctx = init_distributed(cfg.train.device)
    try:
        return _run(cfg, ctx, resume, overwrite)
    finally:
        if owns_group:
            shutdown_distributed()


def _run(cfg: RunConfig, ctx: DistContext, resume: bool, overwrite: bool) -> dict[str, Any]:
    files = prepare_run_dir(cfg.run_dir(), resume, overwrite, create=False) if ctx.is_main else RunFiles(cfg.run_dir())
    random_seed(cfg.train.seed)  # the same initial weights on every process
    train_set = build_split(cfg.data, "train")
    roles = [r for r in ("val", "test") if split_name(cfg.data, r) and (r == "val" or cfg.train.test_every_epoch)]
    final_role = ["test"] if split_name(cfg.data, "test") and "test" not in roles else []
    loaders, datasets = build_eval_loaders(cfg.data, roles + final_role, ctx)
    _check_same_classes(train_set, datasets)
    model, trainable = build_model(cfg.model, train_set.num_classes)
    train_loader = build_train_loader(train_set, cfg.data, ctx, cfg.train.seed)
    random_seed(cfg.train.seed, ctx.rank)  # then an augmentation stream of its own
    trainer = Trainer(
        model, trainable, cfg, train_loader, {r: loaders[r] for r in roles}, train_set.num_classes, files, ctx,
        mixup=build_mixup(cfg.data.augment, train_set.num_classes),
    )
    resumed = resume and trainer.resume()
    if ctx.is_main:
        prepare_run_dir(files.root, resume, overwrite, create=True)
        write_yaml(cfg, files.config)
        atomic_write_text(files.classes, json.dumps(list(train_set.classes)))
        start = f"resuming after epoch {trainer.state.epoch}" if resumed else "starting"
        tqdm.write(f"run folder {files.root}: {start} ({len(train_set)} training images, "
                   f"{train_set.num_classes} classes, {ctx.world_size} process(es) x batch {cfg.data.batch_size})")
    barrier(ctx)
    state = trainer.fit()
    if ctx.is_main and cfg.model.method is not None:
        save_adapter(trainer.eval_model, trainable, files.adapter,
                     backbone={"name": cfg.model.name, "kwargs": cfg.model.kwargs})
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
