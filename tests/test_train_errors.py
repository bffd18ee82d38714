"""Clear errors that leave saved work intact: corrupt image, missing split file, wrong architecture, NaN."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import vimtune.engine.runner as runner
from helpers.runs import SMOKE, checksums, make_image_folder, make_vtab_task
from vimtune.cli import main


@pytest.fixture(scope="module")
def pristine_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch smoke run: ``ROOT/run`` trained on ``ROOT/data``; tests get copies (``finished_run``)."""
    root = tmp_path_factory.mktemp("finished")
    data = make_image_folder(root / "data", {"train": 4, "val": 2, "test": 2})
    assert main(["train", *SMOKE, "--data", str(data), "--output-dir", str(root / "run"), "--epochs", "1"]) == 0
    return root


@pytest.fixture
def finished_run(pristine_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """This test's own copy of the pristine run and its data, ``(data, run)``: the tests corrupt images and
    resume runs (which rewrites config.yaml), so none may see another's changes."""
    root = tmp_path / "finished"
    shutil.copytree(pristine_run, root)
    config = root / "run" / "config.yaml"
    config.write_text(config.read_text().replace(str(pristine_run / "data"), str(root / "data")))
    return root / "data", root / "run"


def _saved(run: Path) -> dict[str, str]:
    """Checksums of the files a run saved (config.yaml aside: a resume records its new settings)."""
    return {k: v for k, v in checksums(run).items() if k != "config.yaml" and not k.startswith("tensorboard/")}


@pytest.mark.parametrize("workers", ["0", "1"])
def test_corrupt_image_names_the_file_and_keeps_the_run(
    finished_run: tuple[Path, Path], workers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = finished_run
    bad = data / "train" / "square" / "001.png"
    original = bad.read_bytes()
    before = _saved(run)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    try:
        assert main(["train", "--output-dir", str(run), "--resume", "--epochs", "2", "--num-workers", workers]) == 1
    finally:
        bad.write_bytes(original)
    err = capsys.readouterr().err
    message = [line for line in err.splitlines() if "vimtune train: error:" in line]
    assert message == [f"vimtune train: error: cannot read image '{bad}' (label 1): UnidentifiedImageError: "
                       f"cannot identify image file '{bad}' (use --skip-bad-images to drop unreadable images)"]
    assert _saved(run) == before


def test_missing_split_file_names_it_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = make_vtab_task(tmp_path / "task")
    (task / "val200.txt").unlink()
    run = tmp_path / "run"
    args = ["train", *SMOKE, "--data-kind", "vtab", "--data", str(task), "--output-dir", str(run)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "VTAB split 'val' expects list file" in err and str(task / "val200.txt") in err
    assert not run.exists()


def test_wrong_architecture_checkpoint_is_refused(
    finished_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = finished_run
    before = checksums(run)
    weights = run / "weights" / "last.safetensors"
    deeper = ["--set", "model.kwargs.depth=3"]

    assert main(["eval", "--checkpoint", str(weights), *SMOKE, *deeper, "--data", str(data),
                 "--output-dir", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "missing keys: layers.2." in err

    assert main(["train", "--output-dir", str(run), "--resume", "--set", "model.kwargs.embed_dim=48"]) == 1
    err = capsys.readouterr().err
    assert "mis-shaped keys" in err and "(48,)" in err

    fresh = tmp_path / "fresh"
    assert main(["train", *SMOKE, *deeper, "--data", str(data), "--output-dir", str(fresh),
                 "--set", f"model.backbone_weights={weights}"]) == 1
    assert "missing keys: layers.2." in capsys.readouterr().err
    assert not fresh.exists() and not (tmp_path / "eval").exists()
    assert checksums(run) == before


def test_existing_run_folder_is_not_overwritten(
    finished_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = finished_run
    before = checksums(run)
    assert main(["train", *SMOKE, "--data", str(data), "--output-dir", str(run)]) == 1
    assert "--resume" in capsys.readouterr().err and checksums(run) == before


def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoint(
    finished_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = finished_run

    def nan_model(*args, **kwargs):
        model, trainable = attach_method(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, out: out * float("nan") if module.training else out)
        return model, trainable

    attach_method = runner.attach_method
    monkeypatch.setattr(runner, "attach_method", nan_model)
    before = _saved(run)
    assert main(["train", "--output-dir", str(run), "--resume", "--epochs", "3"]) == 1
    err = capsys.readouterr().err
    assert "training loss is nan" in err and "at epoch 2, step 1/" in err
    assert f"checkpoint '{run / 'checkpoint.pt'}' (epoch 1) is unchanged" in err
    assert _saved(run) == before


def test_eval_refuses_a_split_with_other_classes(
    finished_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = finished_run
    other = tmp_path / "other"
    shutil.copytree(data, other)
    (other / "test" / "stripes").rename(other / "test" / "zigzag")
    before = checksums(run)
    assert main(["eval", str(run), "--data", str(other)]) == 1
    assert ("the evaluated split's classes ['circle', 'square', 'zigzag'] differ from the model's "
            "['circle', 'square', 'stripes']") in capsys.readouterr().err
    assert checksums(run) == before
