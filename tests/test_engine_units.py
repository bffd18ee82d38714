"""Unit tests of the engine's parts: config, recipes, atomic files, RNG, metrics, optimizer, protocols."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import vimtune.models  # noqa: F401 - registers the Vim configs
from vimtune.engine import (
    ClassificationMeter,
    RunConfig,
    WholeModel,
    available_recipes,
    build_config,
    load_checkpoint_state,
    load_recipe,
    parse_override,
    save_checkpoint,
)
from vimtune.engine.checkpoint import atomic_write, capture_rng_state, restore_rng_state
from vimtune.engine.config import OptimConfig, write_yaml
from vimtune.engine.optim import build_optimizer, scale_lrs
from vimtune.engine.protocols import available_protocols


def test_overrides_apply_in_order_and_coerce_types() -> None:
    base = {"optim": {"lr": "5e-4"}, "model": {"name": "vim_nano_patch4_32"}}
    cfg = build_config(base, [parse_override("optim.lr=1e-3"), parse_override("model.kwargs.depth=2"),
                              parse_override("data.val_split=null"), ("optim.lr", 2e-3),
                              parse_override("data.augment.scale=[0.5, 1.0]")])
    assert cfg.optim.lr == 2e-3 and cfg.model.kwargs == {"depth": 2}
    assert cfg.data.val_split is None and cfg.data.augment.scale == (0.5, 1.0)
    assert build_config(base).optim.lr == 5e-4  # YAML 1.1 reads 5e-4 as a string
    assert cfg.run_dir() == Path("runs/vim_nano_patch4_32-scratch")


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lrr=1", "unknown config key(s) optim.lrr; valid keys here: optim.opt, optim.lr"),
    ("train.epochs=many", "config key 'train.epochs': 'many' is not a valid int"),
    ("train.epochs=null", "config key 'train.epochs' cannot be null"),
    ("train.bf16=1", "config key 'train.bf16': 1 is not a valid bool"),
    ("optim=3", "config key 'optim' must be a mapping"),
])
def test_bad_config_values_are_named(override: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        build_config({}, [parse_override(override)])
    with pytest.raises(ValueError, match="key=value"):
        parse_override("optim.lr")


def test_every_bundled_recipe_is_a_valid_config(tmp_path: Path) -> None:
    names = available_recipes()
    assert {"smoke", "pretrain_cifar10_micro", "svp_vtab", "svp_fgvc", "baselines_vtab"} <= set(names)
    for name in names:
        cfg = build_config(load_recipe(name))
        cfg.data.augment.resolved()
        write_yaml(cfg, tmp_path / f"{name}.yaml")
        assert build_config(load_recipe(str(tmp_path / f"{name}.yaml"))) == cfg  # YAML round trip
    with pytest.raises(FileNotFoundError, match="bundled recipes: .*smoke"):
        load_recipe("no_such_recipe")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")

    def crash(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c.pt", {"rng": [capture_rng_state()]})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(load_checkpoint_state(tmp_path / "c.pt")["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    (tmp_path / "other.pt").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="cannot read resume checkpoint"):
        load_checkpoint_state(tmp_path / "other.pt")


def test_meter_counts_top1_topk_per_class_and_confusion() -> None:
    meter = ClassificationMeter(num_classes=3)
    logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    meter.update(logits, torch.tensor([0, 1, 1, 0]), loss_sum=4.0)
    summary = meter.summary()
    assert meter.topk == 3 and summary["top1"] == 50.0 and summary["top5"] == 100.0
    assert summary["loss"] == 1.0 and summary["count"] == 4
    assert meter.confusion.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 0]]
    assert meter.per_class_accuracy() == [50.0, 50.0, None]


def test_optimizer_excludes_norms_biases_embeddings_and_method_names() -> None:
    model = timm.create_model("vim_nano_patch4_32", num_classes=3, depth=1, embed_dim=16)

    class HeadWithoutDecay(WholeModel):
        def no_weight_decay_names(self, model: torch.nn.Module) -> set[str]:
            return {"head.*"}

    optimizer = build_optimizer(model, HeadWithoutDecay(), OptimConfig(weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert {"pos_embed", "cls_token", "norm_f.weight", "head.weight", "head.bias",
            "patch_embed.proj.bias"} <= no_decay
    assert "patch_embed.proj.weight" in decay and "layers.0.mixer.in_proj.weight" in decay
    assert no_decay | decay == set(names.values()) and not no_decay & decay
    scaled = scale_lrs(OptimConfig(lr=1e-3, warmup_lr=1e-6, min_lr=1e-5), global_batch=1024)
    assert (scaled.lr, scaled.warmup_lr, scaled.min_lr) == (2e-3, 2e-6, 2e-5)


def test_protocols_follow_what_was_evaluated() -> None:
    assert available_protocols([]) == []
    assert available_protocols([{"epoch": 1}]) == ["last"]
    assert available_protocols([{"epoch": 1, "val_top1": 1.0, "test_top1": 2.0}]) == ["val", "last", "best-test"]
    assert RunConfig(output_dir="x").run_dir() == Path("x")
