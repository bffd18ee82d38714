"""Bad dataset inputs get a clear error naming the file (and line) before any training step."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from helpers.runs import SMOKE, make_vtab_task
from vimtune.cli import main
from vimtune.data import DatasetNotFoundError, EmptySplitError, UnsafePickleError, build_dataset
from vimtune.engine import build_config
from vimtune.engine.builder import missing_val_note, split_name


def _vtab_args(task: Path, run: Path) -> list[str]:
    return ["train", *SMOKE, "--data-kind", "vtab", "--data", str(task), "--output-dir", str(run), "--epochs", "1"]


@pytest.mark.parametrize("list_file", ["test.txt", "val200.txt"])
def test_empty_split_is_an_error_naming_the_list_file(
    tmp_path: Path, list_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    task = make_vtab_task(tmp_path / "task")
    (task / list_file).write_text("\n")
    run = tmp_path / "run"
    assert main(_vtab_args(task, run)) == 1
    err = capsys.readouterr().err
    assert f"split file '{task / list_file}' lists no images" in err
    assert "Traceback" not in err and not run.exists()


def test_eval_on_an_empty_split_keeps_the_results_and_output_dir_is_honoured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = make_vtab_task(tmp_path / "task")
    run = tmp_path / "run"
    assert main(_vtab_args(task, run)) == 0
    assert main(["eval", str(run)]) == 0
    saved = run / "eval" / "val_test.json"
    before = saved.read_bytes()

    empty = make_vtab_task(tmp_path / "empty")
    (empty / "test.txt").write_text("")
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(empty)]) == 1
    assert f"'{empty / 'test.txt'}' lists no images" in capsys.readouterr().err
    assert saved.read_bytes() == before

    elsewhere = tmp_path / "elsewhere"
    assert main(["eval", str(run), "--output-dir", str(elsewhere)]) == 0
    assert (elsewhere / "val_test.json").is_file() and saved.read_bytes() == before


def test_missing_listed_image_is_found_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = make_vtab_task(tmp_path / "task")
    missing = task / "images" / "test_003.png"
    missing.unlink()
    run = tmp_path / "run"
    assert main(_vtab_args(task, run)) == 1
    err = capsys.readouterr().err
    assert f"'{task / 'test.txt'}' line 4: listed image '{missing}' does not exist" in err
    assert not run.exists()  # found at the start: nothing trained, nothing written


def test_latin1_list_file_names_file_line_and_byte(tmp_path: Path) -> None:
    task = make_vtab_task(tmp_path / "task")
    lines = (task / "train800.txt").read_text().splitlines()
    lines[2] = "images/caf\xe9.png 0"
    (task / "train800.txt").write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(ValueError, match=r"train800.txt' line 3: byte 0xe9 is not UTF-8"):
        build_dataset("vtab", str(task), "train")


def test_utf8_bom_is_not_part_of_the_first_path(tmp_path: Path) -> None:
    task = make_vtab_task(tmp_path / "task")
    text = (task / "train800.txt").read_text()
    (task / "train800.txt").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    (task / "classes.txt").write_bytes(b"\xef\xbb\xbf" + (task / "classes.txt").read_bytes())
    dataset = build_dataset("vtab", str(task), "train")
    assert dataset.samples[0][0] == str(task / "images" / "train800_000.png")
    assert dataset.classes[0] == "circle"


def test_paths_outside_the_dataset_root_need_an_opt_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = make_vtab_task(tmp_path / "deep" / "task")
    outside = tmp_path / "outside.png"
    (task / "images" / "test_000.png").rename(outside)
    (task / "test.txt").write_text("../../outside.png 0\n" + "".join(
        (task / "test.txt").read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(ValueError, match=r"test.txt' line 1: image path .* is outside the dataset root"):
        build_dataset("vtab", str(task), "test")
    assert len(build_dataset("vtab", str(task), "test", allow_outside_root=True)) == 6
    run = tmp_path / "run"
    assert main(_vtab_args(task, run)) == 1
    assert "--allow-outside-root" in capsys.readouterr().err and not run.exists()
    assert main([*_vtab_args(task, run), "--allow-outside-root"]) == 0


def test_fgvc_missing_and_outside_images(tmp_path: Path) -> None:
    task = make_vtab_task(tmp_path / "task")
    (task / "train.json").write_text('{"images/train800_000.png": 1, "images/gone.png": 2}')
    with pytest.raises(DatasetNotFoundError, match=r"train.json' entry 'images/gone.png': listed image"):
        build_dataset("fgvc", str(task), "train")
    (task / "train.json").write_text('{"images/train800_000.png": 1, "../../etc/passwd": 2}')
    with pytest.raises(ValueError, match="outside the dataset root"):
        build_dataset("fgvc", str(task), "train")
    (task / "train.json").write_text("{}")
    with pytest.raises(EmptySplitError, match="train.json' lists no images"):
        build_dataset("fgvc", str(task), "train")


def _cifar_folder(root: Path, train_images: int = 10) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([*(f"data_batch_{b}" for b in range(1, 6)), "test_batch"]):
        count = train_images if i < 5 else 8
        batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), b"labels": [j % 3 for j in range(count)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def test_cifar_unsafe_and_truncated_pickles_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _cifar_folder(tmp_path)
    batch = folder / "test_batch"
    batch.write_bytes(b"cos\nsystem\n(S'echo owned'\ntR.")
    with pytest.raises(UnsafePickleError, match=f"'{batch}': refusing to load global 'os.system'"):
        build_dataset("cifar10", str(tmp_path), "test")
    assert main(["eval", "--checkpoint", str(tmp_path / "w.safetensors"), *SMOKE, "--data-kind", "cifar10",
                 "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"'{batch}': refusing to load global 'os.system'" in err and "Traceback" not in err
    good = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)
    batch.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=f"'{batch}' is not a readable pickle"):
        build_dataset("cifar10", str(tmp_path), "test")


def test_cifar_trains_with_default_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default data.val_split 'val' does not exist for CIFAR: validation is skipped with a note."""
    cfg = build_config({"data": {"kind": "cifar10"}})
    assert cfg.data.val_split == "val" and split_name(cfg.data, "val") is None
    assert "cifar10 has no 'val' split" in missing_val_note(cfg.data)
    _cifar_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", *SMOKE, "--set", "data.val_split=val", "--data-kind", "cifar10", "--data",
                 str(tmp_path / "data"), "--output-dir", str(run), "--epochs", "1"]) == 0
    assert "cifar10 has no 'val' split" in capsys.readouterr().err
    assert (run / "weights" / "last.safetensors").is_file()
