"""``vimtune demo`` and its pieces: digits as a VTAB task, backbone weights with fresh heads, the fallback."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from helpers.tiny_models import TINY_BACKBONE, TINY_BACKBONE_ARGS
from vimtune.bench.runner import cpu_slug, machine_line
from vimtune.cli import main
from vimtune.demo import BackboneSpec, MissingWeightsError, resolve_backbone, results_table, write_digits_task


def _lines(path: Path) -> list[tuple[str, int]]:
    return [(p, int(y)) for p, y in (line.split() for line in path.read_text().splitlines())]


def test_demo_with_a_tiny_random_backbone_writes_runs_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--output-dir", str(out), *TINY_BACKBONE_ARGS, "--no-pretrained", "--epochs", "1",
            "--train-size", "40", "--test-size", "30", "--batch-size", "8", "--results", str(tmp_path / "r" / "demo")]
    monkeypatch.setattr(sys, "argv", ["vimtune", *argv])  # as the console script sees it
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["svp", "linear"]
    for method, row in rows.items():
        assert 0.0 <= row["protocols"]["last"]["test_acc"] <= 1.0
        assert row["protocols"]["last"]["epoch"] == 1
        assert (out / method / "final_metrics.json").is_file()
        assert (out / method / "adapter" / "adapter.safetensors").is_file()
        assert f"| {method} |" in printed
    assert rows["svp"]["trainable_params"] > rows["linear"]["trainable_params"] > 0
    assert result["backbone"]["random_init"] and "RANDOMLY INITIALISED" in (out / "results.md").read_text()
    assert len(_lines(out / "data" / "digits" / "train800.txt")) == 40
    assert len(_lines(out / "data" / "digits" / "test.txt")) == 30
    # --results: the table with its timings, the command, the machine and its load, named after the CPU
    [md] = (tmp_path / "r").glob("demo.*.md")
    machine = json.loads(md.with_suffix(".json").read_text())
    assert md.name == f"demo.{cpu_slug(machine['machine'])}.md"
    text = md.read_text()
    assert f"Written by `{shlex.join(['vimtune', *argv])}`" in text
    assert f"Machine: {machine_line(machine['machine'])}. Load average" in text
    assert "**Results**\n\n" + results_table(result["rows"]) in text and "Total time" in text
    assert machine["rows"] == result["rows"] and len(machine["load_average"]) == 2


def test_demo_refuses_a_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--output-dir", str(tmp_path), *TINY_BACKBONE_ARGS, "--no-pretrained"]) == 1
    assert "not a demo's" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_digits_task_is_a_stratified_disjoint_vtab_split(tmp_path: Path) -> None:
    root = write_digits_task(tmp_path / "digits", train=100, test=50, seed=3)
    train, test = _lines(root / "train800.txt"), _lines(root / "test.txt")
    assert len(train) == 100 and len(test) == 50
    assert not {p for p, _ in train} & {p for p, _ in test}
    assert np.bincount([y for _, y in train], minlength=10).tolist() == [10] * 10
    assert (root / "classes.txt").read_text().split() == [str(d) for d in range(10)]
    image = Image.open(root / train[0][0])
    assert image.size == (8, 8) and image.mode == "L"
    assert _lines(write_digits_task(tmp_path / "again", 100, 50, seed=3) / "test.txt") == test
    with pytest.raises(ValueError, match="1797"):
        write_digits_task(tmp_path / "too_big", train=1500, test=400)


def test_missing_committed_weights_fail_clearly_or_fall_back_loudly(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "vim_micro_patch4_32.cifar10.safetensors"
    monkeypatch.setattr(timm.models, "get_pretrained_cfg",  # BackboneSpec imports it from timm.models when called
                        lambda name: SimpleNamespace(file=str(missing), input_size=(3, 32, 32)))
    with pytest.raises(MissingWeightsError, match="--no-pretrained"):
        resolve_backbone(BackboneSpec())
    resolved = resolve_backbone(BackboneSpec(), random_fallback=True)
    assert resolved.file is None and "RANDOMLY INITIALISED" in resolved.warning
    with pytest.raises(FileNotFoundError, match="backbone weights .* not found"):
        resolve_backbone(BackboneSpec(weights=str(missing)), random_fallback=True)  # an explicit file must exist


def test_results_name_the_backbone_file_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "checkout" / "weights.safetensors"
    file.parent.mkdir()
    save_file(timm.create_model("vim_nano_patch4_32", **TINY_BACKBONE).state_dict(), str(file))
    resolved = resolve_backbone(BackboneSpec("vim_nano_patch4_32", TINY_BACKBONE, weights=str(file)))
    monkeypatch.chdir(file.parent)
    assert resolved.describe()["weights"] == "weights.safetensors"  # no checkout location in results files
    monkeypatch.chdir(tmp_path.parent)
    assert resolved.describe()["weights"] == str(file.resolve().relative_to(tmp_path.parent))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resolved.describe()["weights"] == str(file.resolve())  # outside the working directory: absolute


def test_weights_for_a_task_keep_the_backbone_and_give_a_seeded_fresh_head(tmp_path: Path) -> None:
    pretrained = timm.create_model("vim_nano_patch4_32", num_classes=10, **TINY_BACKBONE)
    with torch.no_grad():
        pretrained.head.weight.fill_(1.0)
    file = tmp_path / "pretrained.safetensors"
    save_file(pretrained.state_dict(), str(file))
    resolved = resolve_backbone(BackboneSpec("vim_nano_patch4_32", TINY_BACKBONE, weights=str(file)))
    assert resolved.warning is None and len(resolved.sha256) == 64

    path = resolved.weights_for(10, seed=0, directory=tmp_path / "heads")
    state, original = load_file(str(path)), pretrained.state_dict()
    assert set(state) == set(original)
    assert all(torch.equal(state[k], original[k]) for k in original if not k.startswith("head."))
    assert state["head.weight"].abs().max() < 0.5  # fresh (trunc-normal, std 0.02), not the pretrained ones
    assert resolved.weights_for(10, seed=0, directory=tmp_path / "heads") == path
    three = load_file(str(resolved.weights_for(3, seed=0, directory=tmp_path / "heads")))
    assert three["head.weight"].shape == (3, TINY_BACKBONE["embed_dim"])
    reseeded = load_file(str(resolved.weights_for(10, seed=1, directory=tmp_path / "heads")))
    assert not torch.equal(reseeded["head.weight"], state["head.weight"])
