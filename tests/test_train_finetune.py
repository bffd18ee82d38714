"""``vimtune finetune``: SVP on a VTAB-style task from a backbone file, with EMA and accumulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import vimtune.engine.runner as runner
import vimtune.models  # noqa: F401 - registers the Vim configs
from helpers.runs import SMOKE, assert_identical, assert_same_training, make_vtab_task
from vimtune.cli import main
from vimtune.engine import load_checkpoint_state
from vimtune.engine.inference import load_run
from vimtune.methods import load_adapter

SVP = ["--method", "svp", "--set", "model.method_options.rank=4", "--set", "model.method_options.group_size=4"]


def test_svp_finetune_saves_only_the_adapter_and_extends_on_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = make_vtab_task(tmp_path / "task")
    backbone = timm.create_model("vim_nano_patch4_32", num_classes=10, depth=2, embed_dim=32, img_size=16)
    save_file(backbone.state_dict(), tmp_path / "backbone.safetensors")
    run = tmp_path / "run"
    args = ["finetune", *SMOKE, *SVP, "--backbone-weights", str(tmp_path / "backbone.safetensors"),
            "--data-kind", "vtab", "--data", str(task), "--output-dir", str(run), "--epochs", "2",
            "--batch-size", "4", "--accum-steps", "2", "--ema", "--test-every-epoch"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "protocol best-test" in out.out and "WARNING" in out.out

    checkpoint = load_checkpoint_state(run / "checkpoint.pt")
    assert set(checkpoint["model"]) == set(checkpoint["ema"])
    assert {"head.weight", "head.bias"} < set(checkpoint["model"])
    assert all(k.startswith(("head.", "svp.")) for k in checkpoint["model"])  # no frozen backbone
    assert checkpoint["global_step"] == 4  # 12 images / batch 4 = 3 batches -> 2 updates per epoch

    final = json.loads((run / "final_metrics.json").read_text())
    assert set(final["protocols"]) == {"val", "last", "best-test"}
    assert 0 < final["trainable_params"] < final["total_params"]
    # the run's pictures: curves every epoch, a confusion matrix per protocol, the report embedding them
    assert (run / "curves.png").is_file() and (run / "report.html").is_file()
    assert {p.name for p in (run / "eval").glob("*_confusion.png")} == {
        f"{p}_test_confusion.png" for p in ("val", "last", "best-test")}
    assert (run / "report.html").read_text().count("data:image/png;base64,") == 4

    images = torch.randn(2, 3, 16, 16)
    adapted, _ = load_adapter(run / "adapter", backbone_weights=tmp_path / "backbone.safetensors")
    loaded = load_run(run, "last")
    torch.testing.assert_close(adapted.eval()(images), loaded.model(images))

    image = str(task / "images" / "test_000.png")
    assert main(["viz", str(run), image, str(task / "images" / "test_001.png"), "--out", str(tmp_path / "viz")]) == 0
    assert {p.name for p in (tmp_path / "viz").iterdir()} == {"attention.png", "gates.png", "svp_prompts.png",
                                                              "gate_change.json"}
    backbone_file = str(tmp_path / "backbone.safetensors")
    assert main(["viz", "--checkpoint", str(run / "adapter"), "--backbone-weights", backbone_file, image,
                 "--out", str(tmp_path / "viz-adapter"), "--prefix", "a_"]) == 0
    assert {p.name for p in (tmp_path / "viz-adapter").iterdir()} == {"a_attention.png", "a_gates.png",
                                                                      "a_svp_prompts.png", "a_gate_change.json"}
    capsys.readouterr()
    assert main(["viz", str(run), str(task / "classes.txt"), "--out", str(tmp_path / "bad")]) == 1
    assert "classes.txt" in capsys.readouterr().err  # an error naming the file, no traceback

    assert main(["eval", str(run), "--protocol", "best-test"]) == 0
    assert "WARNING: protocol 'best-test'" in capsys.readouterr().err

    assert main(["finetune", "--output-dir", str(run), "--resume", "--epochs", "3"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert json.loads((run / "final_metrics.json").read_text())["epochs"] == 3


class RunStoppedError(Exception):
    """Stands for a run stopped mid-epoch (a crash, Ctrl-C, a lost machine)."""


def test_interrupted_finetune_resumes_bit_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   torch_threads) -> None:
    """SVP with the SVP recipe (mixup / cutmix, RandAugment), an EMA, accumulation over 2 batches with a short
    last group (3 batches per epoch) and a data worker, stopped in its third epoch and resumed: the same
    checkpoint, weights, EMA, optimizer state, RNG streams and records as an uninterrupted run."""
    torch_threads(2)
    task = make_vtab_task(tmp_path / "task")
    backbone = timm.create_model("vim_nano_patch4_32", num_classes=10, depth=2, embed_dim=32, img_size=16)
    save_file(backbone.state_dict(), tmp_path / "backbone.safetensors")
    args = ["finetune", *SMOKE, *SVP, "--backbone-weights", str(tmp_path / "backbone.safetensors"),
            "--data-kind", "vtab", "--data", str(task), "--epochs", "3", "--batch-size", "4", "--accum-steps", "2",
            "--ema", "--num-workers", "1", "--seed", "1", "--set", "train.ema_decay=0.9",
            "--set", "data.augment.recipe=svp", "--set", "model.kwargs.drop_path_rate=0.1"]
    assert main([*args, "--output-dir", str(tmp_path / "reference")]) == 0

    forwards = 0

    def stop_in_epoch_3(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        nonlocal forwards
        forwards += module.training
        if forwards == 2 * 3 + 2:  # the second batch of epoch 3, inside its first accumulation group
            raise RunStoppedError
        return output

    def interrupted_model(*a: object, **kw: object) -> tuple:
        model, trainable = attach_method(*a, **kw)
        model.register_forward_hook(stop_in_epoch_3)
        return model, trainable

    attach_method = runner.attach_method
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(runner, "attach_method", interrupted_model)
        with pytest.raises(RunStoppedError):
            main([*args, "--output-dir", str(run)])
    assert load_checkpoint_state(run / "checkpoint.pt")["epoch"] == 2
    torch.rand(5)  # the stopped process's random streams moved on; the resume must restore them

    assert main(["finetune", "--output-dir", str(run), "--resume"]) == 0
    assert_same_training(run, tmp_path / "reference")
    reference_adapter = load_file(tmp_path / "reference" / "adapter" / "adapter.safetensors")
    assert_identical(load_file(run / "adapter" / "adapter.safetensors"), reference_adapter, "adapter")
