"""Smaller trust fixes: predict on folders, eval --checkpoint never overwrites, convert infers s,
use_ema without EMA weights, weights-file messages, adapter file modes, the benchmark list."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import timm
import torch

import vimtune.models  # noqa: F401 - registers the Vim configs
from helpers.runs import SMOKE, make_image_folder
from vimtune.cli import main
from vimtune.methods import build, load_adapter, save_adapter
from vimtune.methods.svp_release import release_group_size
from vimtune.models import CheckpointError, read_state_dict


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch smoke run and its data: ``(data, run)``."""
    root = tmp_path_factory.mktemp("trained")
    data = make_image_folder(root / "data", {"train": 4, "val": 2, "test": 2})
    assert main(["train", *SMOKE, "--data", str(data), "--output-dir", str(root / "run"), "--epochs", "1"]) == 0
    return data, root / "run"


def test_predict_accepts_a_folder(trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, run = trained
    capsys.readouterr()
    assert main(["predict", str(run), str(data / "test"), "--json"]) == 0
    answered = [entry["image"] for entry in json.loads(capsys.readouterr().out)]
    assert answered == sorted(str(p) for p in (data / "test").rglob("*.png")) and len(answered) == 6
    (data / "empty").mkdir()
    assert main(["predict", str(run), str(data / "empty")]) == 1
    assert f"folder '{data / 'empty'}' holds no image files" in capsys.readouterr().err


def test_eval_checkpoint_never_overwrites_an_earlier_result(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = trained
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--checkpoint", str(run / "weights" / "last.safetensors"), *SMOKE, "--data", str(data)]
    assert main(args) == 0
    first = Path("runs/eval-last/last_test.json")
    first.write_text("earlier result")
    assert main(args) == 0
    assert first.read_text() == "earlier result"
    assert "'runs/eval-last' exists (kept): writing to 'runs/eval-last-2'" in capsys.readouterr().err
    assert json.loads(Path("runs/eval-last-2/last_test.json").read_text())["count"] == 6


def test_release_group_size_is_depth_over_groups() -> None:
    assert [release_group_size(24, g) for g in (3, 2, 4, 1)] == [8, 12, 6, 24]
    with pytest.raises(CheckpointError, match="5 cross-prompter groups cannot belong to a depth-4"):
        release_group_size(4, 5)


def test_use_ema_without_ema_weights_is_an_error(tmp_path: Path) -> None:
    state = timm.create_model("vim_nano_patch4_32", depth=1, embed_dim=16).state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": state, "model_ema": None}, path)
    with pytest.raises(CheckpointError, match=f"{path}: EMA weights were asked for .* 'model_ema' is None"):
        read_state_dict(path, use_ema=True)
    assert read_state_dict(path).keys() == state.keys()


def test_a_missing_user_weights_file_is_not_said_to_belong_in_the_package() -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: '/nowhere/w.pth'") as err:
        timm.create_model("vim_nano_patch4_32", pretrained=True, pretrained_cfg_overlay=dict(file="/nowhere/w.pth"))
    assert "package" not in str(err.value)


def test_adapter_files_have_the_mode_of_other_run_files(tmp_path: Path) -> None:
    model = timm.create_model("vim_nano_patch4_32", num_classes=3, depth=1, embed_dim=16)
    method = build("linear")
    method.attach(model, num_classes=3)
    (tmp_path / "w.bin").write_bytes(b"w")
    record = {"source": str(tmp_path / "w.bin"), "sha256": "0" * 64}
    out = save_adapter(model, method, tmp_path / "adapter",
                       backbone={"name": "vim_nano_patch4_32", "kwargs": {"depth": 1, "embed_dim": 16},
                                 "weights": record})
    umask = os.umask(0)
    os.umask(umask)
    plain = stat.S_IMODE((tmp_path / "w.bin").stat().st_mode)
    assert plain == 0o666 & ~umask
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {plain}
    with pytest.raises(CheckpointError, match="these are other weights"):  # the record is checked
        load_adapter(out)


def test_bench_lists_only_runnable_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    for helper in ("runner", "measure"):
        assert main(["bench", helper]) == 1
        err = capsys.readouterr().err
        assert f"unknown benchmark {helper!r}" in err and "runner" not in err.split("available:")[1]
