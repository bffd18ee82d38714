"""Options shared by ``vimtune train`` and ``vimtune finetune``, and their translation to a RunConfig.

Precedence, lowest first: for ``finetune``, the method's defaults (``vimtune.methods.defaults``)
for every ``optim`` key the recipe leaves unset; the recipe (``--config``); ``--set KEY=VALUE``
overrides; explicit flags. With ``--resume`` the run folder's own ``config.yaml`` replaces the recipe.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from vimtune.choices import DATASET_KINDS
from vimtune.cli._errors import one_line

if TYPE_CHECKING:
    from vimtune.engine import RunConfig

# The engine, data, methods and models packages import torch (seconds): they are imported in the
# functions that run a command, so that building the parser (and ``--help``) stays fast.

#: explicit flag (argparse dest) -> config key
FLAG_KEYS = {
    "name": "name",
    "output_dir": "output_dir",
    "model": "model.name",
    "method": "model.method",
    "backbone_weights": "model.backbone_weights",
    "random_backbone": "model.random_backbone",
    "data": "data.root",
    "data_kind": "data.kind",
    "batch_size": "data.batch_size",
    "num_workers": "data.num_workers",
    "skip_bad_images": "data.skip_bad_images",
    "allow_outside_root": "data.allow_outside_root",
    "img_size": "data.augment.img_size",
    "split": "data.test_split",
    "epochs": "train.epochs",
    "lr": "optim.lr",
    "accum_steps": "optim.accum_steps",
    "clip_grad": "optim.clip_grad",
    "seed": "train.seed",
    "device": "train.device",
    "bf16": "train.bf16",
    "ema": "train.ema",
    "test_every_epoch": "train.test_every_epoch",
}


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--set``."""
    parser.add_argument("--config", metavar="RECIPE",
                        help="recipe: a bundled name (smoke, svp_vtab, ...) or a YAML file path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (dotted, e.g. optim.lr=1e-3, model.kwargs.depth=6); "
                             "repeatable")


def add_run_options(parser: argparse.ArgumentParser, finetune: bool) -> None:
    """The options of ``train`` (and, with ``finetune``, ``--method``/``--backbone-weights``)."""
    add_config_options(parser)
    run = parser.add_argument_group("run folder")
    run.add_argument("--name", help="run name (default folder runs/<name>)")
    run.add_argument("--output-dir", help="run folder (default runs/<name>)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in the run folder from its checkpoint.pt (its config.yaml is used)")
    mode.add_argument("--overwrite", action="store_true", help="delete an existing run folder and start over")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="timm model name, e.g. vim_micro_patch4_32")
    if finetune:
        model.add_argument("--method", help="PEFT method: svp, linear, full, ... (see vimtune.methods)")
        weights = model.add_mutually_exclusive_group()
        weights.add_argument("--backbone-weights", metavar="SPEC",
                             help="pretrained backbone: a file (.pth release file, state dict or .safetensors) "
                                  "or hf-hub:OWNER/REPO/FILE, e.g. "
                                  "hf-hub:hustvl/Vim-small-midclstok/vim_s_midclstok_80p5acc.pth; its source and "
                                  "SHA-256 are recorded in the run's run.json")
        weights.add_argument("--pretrained", action="store_true",
                             help="the authors' released ImageNet weights of --model (from the Hugging Face Hub)")
        weights.add_argument("--random-backbone", action="store_true", default=None,
                             help="fine-tune a randomly initialised backbone on purpose (it is stored in the run "
                                  "folder as backbone.safetensors)")
    data = parser.add_argument_group("data")
    data.add_argument("--data", metavar="ROOT", help="dataset folder")
    data.add_argument("--data-kind", choices=DATASET_KINDS, help="dataset layout")
    data.add_argument("--batch-size", type=int, help="images per process per step")
    data.add_argument("--img-size", type=int, help="input side in pixels")
    data.add_argument("--num-workers", type=int, help="DataLoader workers per process")
    data.add_argument("--skip-bad-images", action="store_true", default=None,
                      help="drop unreadable images (with a warning) instead of stopping")
    data.add_argument("--allow-outside-root", action="store_true", default=None,
                      help="accept list-file paths that leave the dataset folder (refused by default)")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int)
    train.add_argument("--lr", type=float, help="base learning rate (scaled by global batch / 512 "
                                                "unless optim.scale_lr=false)")
    train.add_argument("--accum-steps", type=int, help="gradient accumulation steps")
    train.add_argument("--clip-grad", type=float, help="gradient-norm clipping")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto, cpu or cuda")
    train.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast")
    train.add_argument("--ema", action="store_true", default=None, help="keep and use an EMA of the weights")
    train.add_argument("--test-every-epoch", action="store_true", default=None,
                       help="also test after every epoch (enables protocol best-test)")


def overrides_from_args(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """``--set`` pairs followed by the explicit flags that were given."""
    from vimtune.engine import parse_override

    pairs = [parse_override(text) for text in args.overrides]
    pairs += [(key, getattr(args, dest)) for dest, key in FLAG_KEYS.items() if getattr(args, dest, None) is not None]
    return pairs


def with_method_defaults(recipe: dict[str, Any], method: str) -> dict[str, Any]:
    """``recipe`` with ``method``'s default ``optim`` settings under the keys it leaves unset."""
    from vimtune.methods.defaults import method_defaults

    return {**recipe, "optim": {**method_defaults(method).optim(), **recipe.get("optim", {})}}


def config_from_args(args: argparse.Namespace, finetune: bool = False) -> RunConfig:
    """The run configuration: [method defaults +] recipe (or the resumed run's config.yaml) + overrides + flags."""
    from vimtune.engine import build_config, load_recipe, load_run_config
    from vimtune.models import release_spec

    overrides = overrides_from_args(args)
    recipe = load_recipe(args.config) if args.config else {}
    cfg = build_config(recipe, overrides)
    if finetune and cfg.model.method:
        cfg = build_config(with_method_defaults(recipe, cfg.model.method), overrides)
    if getattr(args, "pretrained", False):
        cfg.model.backbone_weights = release_spec(cfg.model.name)
    if args.resume:
        cfg = load_run_config(cfg.run_dir(), overrides)
    return cfg


def train_from_args(args: argparse.Namespace, finetune: bool) -> int:
    """Build the config, check the command fits it, train; returns the exit status."""
    from vimtune.data import BadImageError
    from vimtune.engine import run_training

    cfg = config_from_args(args, finetune)
    if finetune and not cfg.model.method:
        raise ValueError("vimtune finetune needs a method: --method NAME (or model.method in the recipe)")
    if not finetune and cfg.model.method:
        raise ValueError(f"the config sets model.method={cfg.model.method!r}: use vimtune finetune; "
                         "vimtune train trains every parameter")
    try:
        run_training(cfg, resume=args.resume, overwrite=args.overwrite)
    except BadImageError as err:
        raise RuntimeError(f"{one_line(err)} (use --skip-bad-images to drop unreadable images)") from err
    return 0
