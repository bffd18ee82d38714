"""The guards every run relies on: the run folder's --resume / --overwrite rules, matching classes across
splits, the optimizer's check that what requires grad is what the method trains, the adapter format
version, flag precedence, malformed VTAB list lines, and the bfloat16 training path."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from torch import nn

from helpers.runs import NoSchedule
from helpers.tiny_models import tiny
from vimtune.cli import build_parser
from vimtune.cli._run_options import config_from_args
from vimtune.data.vtab import read_list_file
from vimtune.engine.config import OptimConfig
from vimtune.engine.distributed import DistContext
from vimtune.engine.loop import EpochRunner
from vimtune.engine.optim import build_optimizer
from vimtune.engine.run_dir import RunDirExistsError, prepare_run_dir
from vimtune.engine.runner import _check_same_classes
from vimtune.methods import build, load_adapter, save_adapter
from vimtune.models import CheckpointError


def test_run_folder_rules(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=f"nothing to resume: run folder '{run}' does not exist"):
        prepare_run_dir(run, resume=True, overwrite=False)
    prepare_run_dir(run, resume=False, overwrite=False)
    (run / "run.json").write_text("{}\n")
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(RunDirExistsError, match="already exists and holds files; pass --resume"):
        prepare_run_dir(run, resume=False, overwrite=False)
    with pytest.raises(ValueError, match="--resume and --overwrite exclude each other"):
        prepare_run_dir(run, resume=True, overwrite=True)
    assert prepare_run_dir(run, resume=True, overwrite=False).root == run
    assert (run / "metrics.jsonl").is_file()  # resuming keeps the files
    prepare_run_dir(run, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["weights"]  # overwriting starts over


def test_splits_must_have_the_training_classes() -> None:
    train = SimpleNamespace(classes=["ant", "bee"])
    _check_same_classes(train, {"val": SimpleNamespace(classes=["ant", "bee"])})
    with pytest.raises(ValueError, match=r"the test split has classes \['bee', 'ant'\] but the training split"):
        _check_same_classes(train, {"val": SimpleNamespace(classes=["ant", "bee"]),
                                    "test": SimpleNamespace(classes=["bee", "ant"])})


def test_optimizer_refuses_parameters_that_disagree_with_the_method() -> None:
    method = build("linear")
    model = method.attach(tiny(num_classes=3))
    model.layers[0].norm.weight.requires_grad_(True)  # a freeze that leaked
    with pytest.raises(RuntimeError, match=r"requires_grad disagree: \['layers.0.norm.weight'\]"):
        build_optimizer(model, method, OptimConfig())
    model.layers[0].norm.weight.requires_grad_(False)
    model.head.bias.requires_grad_(False)  # a trained parameter frozen by mistake
    with pytest.raises(RuntimeError, match=r"requires_grad disagree: \['head.bias'\]"):
        build_optimizer(model, method, OptimConfig())
    model.head.bias.requires_grad_(True)
    assert sum(len(g["params"]) for g in build_optimizer(model, method, OptimConfig()).param_groups) == 2

    class Nothing:
        def trainable_parameters(self, model: nn.Module) -> list:
            return []

    with pytest.raises(RuntimeError, match="the model has no trainable parameters"):
        build_optimizer(tiny().requires_grad_(False), Nothing(), OptimConfig())


def test_adapter_of_another_format_version_is_refused(tmp_path: Path) -> None:
    method = build("linear")
    save_adapter(method.attach(tiny(num_classes=3)), method, tmp_path / "adapter",
                 backbone={"name": "vim_small_patch16_224", "kwargs": {}})
    config_file = tmp_path / "adapter" / "adapter.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "format_version": config["format_version"] + 1}))
    with pytest.raises(CheckpointError, match=r"is not a vimtune-adapter v1 config \(format='vimtune-adapter', "
                                              r"format_version=2\)"):
        load_adapter(tmp_path / "adapter")


def test_flags_beat_set_overrides_beat_the_recipe() -> None:
    def config(*argv: str):
        return config_from_args(build_parser().parse_args(["train", "--config", "smoke", *argv]))

    assert config().data.batch_size == 8  # the recipe
    assert config("--set", "data.batch_size=3").data.batch_size == 3
    both = config("--batch-size", "5", "--set", "data.batch_size=3", "--set", "optim.lr=0.5")
    assert both.data.batch_size == 5 and both.optim.lr == 0.5
    assert config("--lr", "0.25", "--set", "optim.lr=0.5").optim.lr == 0.25


@pytest.mark.parametrize("line, problem", [
    ("images/a.png", "expected 'path label'"),
    ("images/a.png seven", "invalid literal for int"),
    ("images/a.png 1.5", "invalid literal for int"),
])
def test_malformed_vtab_list_lines_name_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    list_file = tmp_path / "train800.txt"
    list_file.write_text(f"images/my cat.png 0\n\n{line}\n")
    with pytest.raises(ValueError, match=f"{list_file}:3: malformed line '{line}' \\({problem}"):
        read_list_file(str(list_file), str(tmp_path))
    list_file.write_text("images/my cat.png 0\n\nimages/b.png 2\n")  # spaces in a path, blank lines
    assert read_list_file(str(list_file), "root") == [("root/images/my cat.png", 0), ("root/images/b.png", 2)]


@pytest.mark.parametrize("bf16", [False, True])
def test_training_step_runs_the_forward_under_bfloat16_autocast_when_asked(bf16: bool) -> None:
    torch.manual_seed(0)
    model = timm.create_model("vim_nano_patch4_32", num_classes=3, depth=1, embed_dim=16, img_size=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = []
    model.head.register_forward_hook(lambda m, i, out: seen.append((torch.is_autocast_enabled("cpu"), out.dtype)))
    runner = EpochRunner(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), scheduler=NoSchedule(),
                         criterion=nn.CrossEntropyLoss(), ctx=DistContext(), bf16=bf16)
    batches = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])) for _ in range(2)]
    updates, loss, _ = runner.run(batches, epoch=0, epochs=1, global_step=0)
    expected = (True, torch.bfloat16) if bf16 else (False, torch.float32)
    assert seen == [expected, expected] and updates == 2 and 0 < loss < 5
    for name, p in model.named_parameters():  # float32 weights, all trained
        assert p.dtype == torch.float32 and not torch.equal(p, before[name]), name
