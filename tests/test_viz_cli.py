"""``vimtune viz`` / ``vimtune report --images`` on a real fine-tuning run: a moved backbone named with
``--backbone-weights``, the gate-change numbers printed and written, ``--overwrite`` clearing ``viz/``, and
one-line errors for files that are not checkpoints."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import vimtune.models  # noqa: F401 - registers the Vim configs
from helpers.runs import SMOKE, make_vtab_task
from vimtune.cli import main
from vimtune.cli._errors import one_line
from vimtune.engine.run_dir import RunFiles
from vimtune.models import CheckpointError, read_state_dict
from vimtune.viz.gate_change import read_gate_change

SVP = ["--method", "svp", "--set", "model.method_options.rank=4", "--set", "model.method_options.group_size=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """An SVP fine-tune of a backbone file on a tiny VTAB task: ``(run folder, backbone file, task)``."""
    root = tmp_path_factory.mktemp("viz_cli")
    task = make_vtab_task(root / "task")
    torch.manual_seed(1)
    backbone = root / "backbone.safetensors"
    save_file(timm.create_model("vim_nano_patch4_32", num_classes=3, depth=2, embed_dim=32, img_size=16)
              .state_dict(), backbone)
    folder = root / "run"
    assert main(["finetune", *SMOKE, *SVP, "--backbone-weights", str(backbone), "--data-kind", "vtab",
                 "--data", str(task), "--output-dir", str(folder), "--epochs", "1", "--batch-size", "4"]) == 0
    return folder, backbone, task


def _images(task: Path) -> list[str]:
    return [str(p) for p in sorted((task / "images").glob("test_*.png"))[:2]]


def test_viz_of_a_run_whose_backbone_moved_needs_and_honours_backbone_weights(
    run: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, backbone, task = run
    moved = tmp_path / "moved.safetensors"
    os.replace(backbone, moved)
    try:
        out = tmp_path / "pictures"
        assert main(["viz", str(folder), *_images(task), "--out", str(out)]) == 1
        assert f"'{backbone}' does not exist" in capsys.readouterr().err and not out.exists()
        assert main(["viz", str(folder), *_images(task), "--out", str(out), "--backbone-weights", str(moved)]) == 0
    finally:
        os.replace(moved, backbone)
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"attention.png", "gates.png", "svp_prompts.png", "gate_change.json"}
    change = read_gate_change(out / "gate_change.json")
    assert change.method == "svp" and change.images == 2 and change.tokens == 16
    assert change.line() in printed  # the numbers behind gates.png, on the terminal too


def test_report_images_go_to_viz_which_overwrite_deletes(
    run: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _, task = run
    folder = tmp_path / "run"
    shutil.copytree(source, folder)
    assert main(["report", str(folder), "--images", *_images(task)]) == 0
    viz = RunFiles(folder).viz_dir
    line = read_gate_change(viz / "gate_change.json").line()
    assert (viz / "gates.png").is_file() and line in capsys.readouterr().out
    assert f"<p>{line}.</p>" in (folder / "report.html").read_text()  # no character of it needs escaping
    assert main(["finetune", "--output-dir", str(folder), "--overwrite", *SMOKE, *SVP, "--random-backbone",
                 "--data-kind", "vtab", "--data", str(task), "--epochs", "1", "--batch-size", "4"]) == 0
    assert not viz.exists()  # the old run's pictures are gone with the rest of it


@pytest.mark.parametrize("content", [b"not a checkpoint\njust text\n", bytes(range(256)) * 4, b""],
                         ids=["text", "binary", "empty"])
def test_a_pth_that_is_not_a_checkpoint_is_one_line_naming_the_file(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert "\n" not in message and "Weights only load failed" not in message
    assert message.startswith(f"'{path}' ({len(content)} bytes) is not a PyTorch checkpoint: ")
    assert main(["viz", "--checkpoint", str(path), "--model", "vim_nano_patch4_32", str(path), "--out",
                 str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"vimtune viz: error: {message}\n"


def test_one_line_joins_the_lines_of_a_message() -> None:
    assert one_line(ValueError("first line\n  second line\n\nthird\n")) == "first line second line third"
    assert one_line(OSError("single")) == "single"
