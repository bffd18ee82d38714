"""Backbone provenance: runs and adapters record the backbone's source and SHA-256; eval, predict and
load_adapter reproduce the run's own numbers or refuse, naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import vimtune.models  # noqa: F401 - registers the Vim configs
from helpers.runs import SMOKE, make_vtab_task
from vimtune.cli import main
from vimtune.engine.inference import load_run
from vimtune.methods import build, load_adapter, save_adapter
from vimtune.models.provenance import ProvenanceError, file_sha256, weights_record

SVP = ["--method", "svp", "--set", "model.method_options.rank=4", "--set", "model.method_options.group_size=1"]
IMAGES = torch.randn(3, 3, 16, 16)


def _backbone(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model("vim_nano_patch4_32", num_classes=3, depth=2, embed_dim=32, img_size=16).state_dict()


def _finetune(task: Path, run: Path, *backbone: str) -> int:
    return main(["finetune", *SMOKE, *SVP, *backbone, "--data-kind", "vtab", "--data", str(task),
                 "--output-dir", str(run), "--epochs", "2", "--batch-size", "4"])


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vtab_task(tmp_path_factory.mktemp("task") / "task")


@pytest.fixture(scope="module")
def pretrained_run(task: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fine-tune from a backbone file: ``(backbone file, run)``."""
    root = tmp_path_factory.mktemp("pretrained")
    weights = root / "backbone.safetensors"
    save_file(_backbone(1), weights)
    assert _finetune(task, root / "run", "--backbone-weights", str(weights)) == 0
    return weights, root / "run"


def _eval_top1(run: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, float]:
    assert main(["eval", str(run), "--protocol", "last", *extra]) == 0
    capsys.readouterr()
    return json.loads((run / "eval" / "last_test.json").read_text())


def test_run_and_adapter_record_the_backbone_and_eval_reproduces_the_run(
    pretrained_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    weights, run = pretrained_run
    record = {"source": str(weights), "sha256": file_sha256(weights)}
    assert json.loads((run / "run.json").read_text())["backbone"] == record
    assert json.loads((run / "adapter" / "adapter.json").read_text())["backbone"]["weights"] == record

    reported = json.loads((run / "final_metrics.json").read_text())["protocols"]["last"]
    evaluated = _eval_top1(run, capsys)
    assert (evaluated["top1"], evaluated["loss"]) == (reported["test_top1"], reported["test_loss"])

    adapted, _ = load_adapter(run / "adapter")  # finds and checks the recorded backbone itself
    with torch.no_grad():
        assert torch.equal(adapted.eval()(IMAGES), load_run(run, "last").model(IMAGES))


def test_a_changed_or_missing_backbone_is_refused(
    pretrained_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights, run = pretrained_run
    kept = tmp_path / "moved.safetensors"
    shutil.copyfile(weights, kept)
    try:
        save_file(_backbone(2), weights)  # same shapes, other weights
        assert main(["eval", str(run)]) == 1
        err = capsys.readouterr().err
        assert f"was trained on backbone weights '{weights}'" in err and f"but '{weights}' has sha256" in err
        assert main(["predict", str(run), str(run.parent)]) == 1
        assert f"but '{weights}' has sha256" in capsys.readouterr().err
        with pytest.raises(ProvenanceError, match="these are other weights"):
            load_adapter(run / "adapter")

        weights.unlink()
        assert main(["eval", str(run)]) == 1
        assert f"but '{weights}' does not exist" in capsys.readouterr().err
        with pytest.raises(ProvenanceError, match="does not exist"):
            load_adapter(run / "adapter")
        assert main(["finetune", "--output-dir", str(run), "--resume", "--epochs", "3"]) == 1  # nor resume
        assert f"but '{weights}' does not exist" in capsys.readouterr().err

        reported = json.loads((run / "final_metrics.json").read_text())["protocols"]["last"]  # the copy is fine
        assert _eval_top1(run, capsys, "--backbone-weights", str(kept))["top1"] == reported["test_top1"]
        load_adapter(run / "adapter", backbone_weights=kept)
    finally:
        shutil.copyfile(kept, weights)


def test_finetune_without_backbone_weights_needs_the_flag(task: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert _finetune(task, tmp_path / "run") == 1
    assert "fine-tuning needs pretrained backbone weights" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_random_backbone_is_stored_and_eval_predict_reproduce_the_run(
    task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert _finetune(task, run, "--random-backbone") == 0
    record = json.loads((run / "run.json").read_text())["backbone"]
    assert record == {"source": "random (seed 0)", "sha256": file_sha256(run / "backbone.safetensors"),
                      "file": "backbone.safetensors"}

    reported = json.loads((run / "final_metrics.json").read_text())["protocols"]["last"]
    assert _eval_top1(run, capsys)["top1"] == reported["test_top1"]
    image = next((task / "images").iterdir())
    answers = []
    for _ in range(2):
        assert main(["predict", str(run), str(image), "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert answers[0] == answers[1]

    adapted, _ = load_adapter(run / "adapter")  # the adapter carries its own copy of the backbone
    with torch.no_grad():
        assert torch.equal(adapted.eval()(IMAGES), load_run(run, "last").model(IMAGES))

    save_file(_backbone(3), run / "backbone.safetensors")
    assert main(["eval", str(run)]) == 1
    assert f"'{run / 'backbone.safetensors'}' has sha256" in capsys.readouterr().err


def test_an_adapter_that_records_no_backbone_needs_one(tmp_path: Path) -> None:
    model = timm.create_model("vim_nano_patch4_32", num_classes=3, depth=2, embed_dim=32, img_size=16)
    method = build("linear")
    method.attach(model, num_classes=3)
    kwargs = {"depth": 2, "embed_dim": 32, "img_size": 16}
    save_adapter(model, method, tmp_path / "adapter", backbone={"name": "vim_nano_patch4_32", "kwargs": kwargs})
    with pytest.raises(ProvenanceError, match=f"adapter '{tmp_path / 'adapter'}' does not record its backbone"):
        load_adapter(tmp_path / "adapter")


def test_weights_record_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="'/nowhere/x.pth' \\(from hf-hub:o/r/x.pth\\)"):
        weights_record("hf-hub:o/r/x.pth", "/nowhere/x.pth")
    (tmp_path / "w.bin").write_bytes(b"abc")
    assert weights_record("w", tmp_path / "w.bin") == {
        "source": "w", "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
