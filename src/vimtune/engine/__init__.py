"""Training, fine-tuning, evaluation and prediction (the ``vimtune`` sub-commands' engine).

Python API::

    cfg = build_config(load_recipe("smoke"), [("data.root", "/data/tiny"), ("train.epochs", 2)])
    final = run_training(cfg)                      # also under torchrun (DDP)
    cfg = load_run_config("runs/x"); run_training(cfg, resume=True)
"""

from vimtune.engine.checkpoint import atomic_write, load_checkpoint_state, save_checkpoint, save_weights
from vimtune.engine.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    build_config,
    parse_override,
    to_dict,
)
from vimtune.engine.distributed import DistContext, init_distributed
from vimtune.engine.evaluate import evaluate
from vimtune.engine.loop import NonFiniteLossError
from vimtune.engine.metrics import ClassificationMeter
from vimtune.engine.protocols import PROTOCOLS, Selection, select
from vimtune.engine.recipes import available_recipes, load_recipe, recipe_path
from vimtune.engine.run_dir import RunDirExistsError, RunFiles
from vimtune.engine.runner import load_run_config, run_training
from vimtune.engine.trainable import Trainable, WholeModel
from vimtune.engine.trainer import Trainer, TrainState

__all__ = [
    "PROTOCOLS",
    "ClassificationMeter",
    "DataConfig",
    "DistContext",
    "ModelConfig",
    "NonFiniteLossError",
    "OptimConfig",
    "RunConfig",
    "RunDirExistsError",
    "RunFiles",
    "Selection",
    "TrainConfig",
    "TrainState",
    "Trainable",
    "Trainer",
    "WholeModel",
    "atomic_write",
    "available_recipes",
    "build_config",
    "evaluate",
    "init_distributed",
    "load_checkpoint_state",
    "load_recipe",
    "load_run_config",
    "parse_override",
    "recipe_path",
    "run_training",
    "save_checkpoint",
    "save_weights",
    "select",
    "to_dict",
]
