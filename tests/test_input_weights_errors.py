"""Bad weights, configs and a failing disk: clear errors naming the file, saved work kept."""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from helpers.runs import SMOKE, checksums, make_vtab_task
from vimtune.cli import main
from vimtune.cli._errors import one_line
from vimtune.data import AugmentationError, build_dataset
from vimtune.engine.builder import build_model
from vimtune.engine.checkpoint import OutputWriteError, load_weights, save_checkpoint
from vimtune.engine.config import ModelConfig, OptimConfig
from vimtune.engine.optim import build_scheduler, describe_schedule, scale_lrs
from vimtune.engine.run_dir import RunFiles
from vimtune.methods import load_adapter, save_adapter
from vimtune.models import CheckpointError, load_checkpoint
from vimtune.models.spec_check import check_model_spec

SMOKE_MODEL = ModelConfig(name="vim_nano_patch4_32", kwargs={"depth": 2, "embed_dim": 32, "img_size": 16})


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A one-epoch linear-probe run on a tiny VTAB task: ``(backbone file, run folder, task)``."""
    root = tmp_path_factory.mktemp("finetuned")
    backbone = root / "backbone.safetensors"
    model = timm.create_model(SMOKE_MODEL.name, num_classes=3, **SMOKE_MODEL.kwargs)
    save_file(model.state_dict(), str(backbone))
    task = make_vtab_task(root / "task")
    run = root / "run"
    assert main(["finetune", *SMOKE, "--method", "linear", "--backbone-weights", str(backbone), "--data-kind",
                 "vtab", "--data", str(task), "--output-dir", str(run), "--epochs", "1"]) == 0
    return backbone, run, task


@pytest.fixture
def run_copy(finetuned: tuple[Path, Path, Path], tmp_path: Path) -> Path:
    """A private copy of the fine-tuned run folder, for tests that break or fill it."""
    copy = tmp_path / "run"
    shutil.copytree(finetuned[1], copy)
    return copy


def _truncated(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return target


def _poisoned(source: Path, target: Path, value: float = float("nan")) -> tuple[Path, str]:
    """A copy of a safetensors file with ``value`` in its first floating-point tensor; returns (file, name)."""
    state = load_file(str(source))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone()
    state[name].view(-1)[0] = value
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target))
    return target, name


def _load_as(kind: str, path: Path, run: Path) -> None:
    """Load ``path`` the way ``kind`` does: backbone, --checkpoint, run weights, adapter weights."""
    if kind == "backbone":
        build_model(ModelConfig(**{**SMOKE_MODEL.__dict__, "backbone_weights": str(path)}), 3, path)
    elif kind == "checkpoint":
        load_checkpoint(timm.create_model(SMOKE_MODEL.name, num_classes=3, **SMOKE_MODEL.kwargs), path)
    elif kind == "run weights":
        model, trainable = build_model(ModelConfig(**{**SMOKE_MODEL.__dict__, "method": "linear"}), 3, None)
        load_weights(model, trainable, path)
    else:
        shutil.copy(run / "adapter" / "adapter.json", path.parent / "adapter.json")
        load_adapter(path.parent, backbone_weights=run.parent / "backbone.safetensors")


def _source(kind: str, backbone: Path, run: Path) -> Path:
    if kind in ("backbone", "checkpoint"):
        return backbone
    return run / "weights" / "last.safetensors" if kind == "run weights" else run / "adapter" / "adapter.safetensors"


KINDS = ["backbone", "checkpoint", "run weights", "adapter"]


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_safetensors_names_the_file(finetuned: tuple[Path, Path, Path], tmp_path: Path, kind: str) -> None:
    backbone, run, _ = finetuned
    cut = _truncated(_source(kind, backbone, run), tmp_path / "cut" / "adapter.safetensors")
    with pytest.raises(CheckpointError, match=f"cannot read '{cut}' .* expected a complete .safetensors file"):
        _load_as(kind, cut, run)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_with_tensor_names(
    finetuned: tuple[Path, Path, Path], tmp_path: Path, kind: str, value: float
) -> None:
    backbone, run, _ = finetuned
    bad, name = _poisoned(_source(kind, backbone, run), tmp_path / "bad" / "adapter.safetensors", value)
    with pytest.raises(CheckpointError, match=f"'{bad}': 1 tensors hold NaN or infinite values: {name}"):
        _load_as(kind, bad, run)


def test_non_finite_pth_backbone_and_cli_eval_refuse(
    finetuned: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backbone, run, task = finetuned
    state = load_file(str(backbone))
    state["norm_f.weight"][3] = float("inf")
    pth = tmp_path / "release.pth"
    torch.save({"model": state}, pth)
    with pytest.raises(CheckpointError, match="norm_f.weight"):
        _load_as("checkpoint", pth, run)
    bad, name = _poisoned(run / "weights" / "last.safetensors", tmp_path / "full.safetensors")
    full = tmp_path / "full_model.safetensors"
    save_file({**load_file(str(backbone)), **load_file(str(bad))}, str(full))
    assert main(["eval", "--checkpoint", str(full), *SMOKE, "--data-kind", "vtab", "--data", str(task),
                 "--output-dir", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err
    assert f"tensors hold NaN or infinite values: {name}" in err and not (tmp_path / "eval").exists()


def _adapter_copy(run: Path, tmp_path: Path, edit) -> Path:
    adapter = tmp_path / "adapter"
    shutil.copytree(run / "adapter", adapter)
    config = json.loads((adapter / "adapter.json").read_text())
    edit(config)
    (adapter / "adapter.json").write_text(json.dumps(config))
    return adapter


def test_adapter_json_is_validated_before_building(finetuned: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, run, _ = finetuned
    deep = _adapter_copy(run, tmp_path / "deep", lambda c: c["backbone"]["kwargs"].update(depth=1000))
    with pytest.raises(CheckpointError, match=r"backbone.kwargs.depth=1000: expected an integer in 1..192"):
        load_adapter(deep)
    negative = _adapter_copy(run, tmp_path / "neg", lambda c: c.update(num_classes=-3))
    with pytest.raises(CheckpointError, match=f"'{negative / 'adapter.json'}': num_classes=-3: expected a positive"):
        load_adapter(negative)
    garbage = _adapter_copy(run, tmp_path / "garbage", lambda c: None)
    (garbage / "adapter.json").write_bytes(b"\x00\xffnot json{")
    with pytest.raises(CheckpointError, match=f"'{garbage / 'adapter.json'}' is not valid JSON"):
        load_adapter(garbage)


def test_huge_model_configs_are_refused_without_allocating(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"model.kwargs.depth=1000000: expected an integer in 1..192"):
        check_model_spec("vim_nano_patch4_32", {"depth": 1000000})
    with pytest.raises(ValueError, match="would have .* parameters, more than"):
        check_model_spec("vim_base_patch16_224", {"embed_dim": 6000})
    with pytest.raises(ValueError, match="unknown argument.*depht"):
        check_model_spec("vim_nano_patch4_32", {"depht": 3})
    task = make_vtab_task(tmp_path / "task")
    run = tmp_path / "run"
    assert main(["train", *SMOKE, "--set", "model.kwargs.depth=1000000", "--data-kind", "vtab", "--data",
                 str(task), "--output-dir", str(run)]) == 1
    assert "model.kwargs.depth=1000000: expected an integer in 1..192" in capsys.readouterr().err
    assert not run.exists()


def test_malformed_and_unsafe_config_yaml(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = run_copy
    (copy / "config.yaml").write_text("model:\n  name: [unclosed\n")
    assert main(["eval", str(copy)]) == 1
    err = capsys.readouterr().err
    assert f"config file '{copy / 'config.yaml'}' is not valid YAML at line" in err and "Traceback" not in err
    (copy / "config.yaml").write_text("model: !!python/object/apply:os.system ['echo owned']\n")
    assert main(["eval", str(copy)]) == 1
    assert "python object tags are refused" in capsys.readouterr().err


def test_torn_metrics_jsonl(tmp_path: Path) -> None:
    files = RunFiles(tmp_path)
    files.metrics.write_text('{"epoch": 1, "val_top1": 50.0}\n{"epoch": 2, "val_top1": 60.0}\n{"epoch": 3, "va')
    with pytest.warns(UserWarning, match=r"metrics.jsonl' line 3 is cut short"):
        assert [r["epoch"] for r in files.read_history()] == [1, 2]
    files.metrics.write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl' line 2 is not a JSON record"):
        files.read_history()


class _FullDisk:
    """Stands in for ``os.fdopen``: a file whose writes fail as on a full disk."""

    def __init__(self, fdopen) -> None:
        self.fdopen = fdopen

    def __call__(self, fd: int, mode: str = "r"):
        real = self.fdopen(fd, mode)

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                real.close()

            def write(self, data) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def __getattr__(self, name):
                return getattr(real, name)

        return Full()


def test_disk_full_keeps_the_previous_checkpoint_and_adapter(
    finetuned: tuple[Path, Path, Path], run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = run_copy
    before = checksums(copy)
    monkeypatch.setattr("vimtune.engine.checkpoint.os.fdopen", _FullDisk(os.fdopen))
    with pytest.raises(OutputWriteError, match=f"cannot write '{copy / 'checkpoint.pt'}': No space left on device"):
        save_checkpoint(copy / "checkpoint.pt", {"model": {"w": torch.zeros(10)}})
    model, method = load_adapter(copy / "adapter", backbone_weights=finetuned[0])
    with pytest.raises(OutputWriteError, match="adapter.safetensors': No space left on device"):
        save_adapter(model, method, copy / "adapter", backbone={"name": SMOKE_MODEL.name, "kwargs": SMOKE_MODEL.kwargs})
    assert checksums(copy) == before  # the previous files intact, no temporary file left


def test_disk_full_during_training_is_one_clean_line(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = run_copy
    checkpoint = (copy / "checkpoint.pt").read_bytes()

    def disk_fills_up(obj, f) -> None:
        f.write(b"PK\x03\x04 the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("vimtune.engine.checkpoint.torch.save", disk_fills_up)
    assert main(["finetune", "--output-dir", str(copy), "--resume", "--epochs", "2"]) == 1
    err = capsys.readouterr().err
    assert f"cannot write '{copy / 'checkpoint.pt'}': No space left on device; the previous" in err
    assert "Traceback" not in err
    assert (copy / "checkpoint.pt").read_bytes() == checkpoint
    assert not [p for p in copy.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_run_folder_is_one_clean_line(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = run_copy

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr("vimtune.engine.checkpoint.tempfile.mkstemp", read_only)
    assert main(["finetune", "--output-dir", str(copy), "--resume", "--epochs", "2"]) == 1
    err = capsys.readouterr().err
    assert f"cannot write '{copy}" in err and "Permission denied" in err and "Traceback" not in err


def test_effective_lr_schedule_and_its_warnings() -> None:
    base = OptimConfig()  # lr 5e-4 scaled by batch / 512, 5 warmup epochs from 1e-6
    scaled = scale_lrs(base, 8)
    line, warns = describe_schedule(base, scaled, 8, epochs=2, updates_per_epoch=375)
    assert "peak lr 7.81e-06 (base 0.0005 x global batch 8 / 512), warmup 5 epochs (1875 updates)" in line
    assert "2 epochs = 750 updates" in line
    assert len(warns) == 2
    assert "covers 100% of the 2-epoch run; the highest lr reached is 3.13e-06" in warns[0]
    assert "peak lr 7.81e-06 is tiny" in warns[1]
    good = scale_lrs(base, 256)
    assert describe_schedule(base, good, 256, epochs=100, updates_per_epoch=10)[1] == []


def test_schedule_is_printed_at_start(finetuned: tuple[Path, Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    backbone, _, task = finetuned
    assert main(["finetune", *SMOKE, "--method", "linear", "--backbone-weights", str(backbone), "--data-kind",
                 "vtab", "--data", str(task), "--output-dir", str(tmp_path / "run"), "--epochs", "1",
                 "--set", "optim.warmup_epochs=5"]) == 0
    out, err = capsys.readouterr()
    assert "lr schedule: cosine, peak lr 0.001 (not scaled by batch), warmup 5 epochs (5 updates)" in out
    assert "warning: the warmup (5 epochs) covers 100% of the 1-epoch run" in err


def test_const_schedule_holds_the_lr_after_warmup() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    cfg = OptimConfig(sched="const", lr=0.1, warmup_epochs=1, warmup_lr=0.01, min_lr=0.0)
    scheduler = build_scheduler(optimizer, cfg, epochs=5, updates_per_epoch=4)
    lrs = []
    for step in range(20):
        scheduler.step_update(step)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.01) and lrs[4:] == [pytest.approx(0.1)] * 16
    with pytest.raises(ValueError, match="optim.sched='plateau': expected one of"):
        build_scheduler(optimizer, OptimConfig(sched="plateau"), epochs=5, updates_per_epoch=4)


def test_worker_errors_become_one_line(tmp_path: Path) -> None:
    task = make_vtab_task(tmp_path / "task")

    def explode(img):
        raise ValueError("bits must be between or equal to 1 and 8")

    loader = DataLoader(build_dataset("vtab", str(task), "train", transform=explode), num_workers=1)
    with pytest.raises(AugmentationError) as info, warnings.catch_warnings():
        next(iter(loader))
    assert one_line(info.value) == (f"augmentation failed on image '{task / 'images' / 'train800_000.png'}' "
                                    "(label 0) in transform: ValueError: bits must be between or equal to 1 and 8")


def test_eval_of_a_finetuned_run_with_a_checkpoint_suggests_its_adapter(
    finetuned: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backbone, run, _ = finetuned
    assert main(["eval", str(run), "--checkpoint", str(run / "weights" / "last.safetensors")]) == 1
    err = capsys.readouterr().err
    assert f"this fine-tuned run's weights are its adapter: --checkpoint {run / 'adapter'}" in err
    out = tmp_path / "eval"
    suggested = ["eval", "--checkpoint", str(run / "adapter"), "--config", str(run / "config.yaml"),
                 "--backbone-weights", str(backbone), "--output-dir", str(out)]
    assert main(suggested) == 0, capsys.readouterr().err  # what the message suggests works
    reported = json.loads((RunFiles(run).eval_dir / "last_test.json").read_text())
    tested = json.loads((out / "adapter_test.json").read_text())
    assert tested["top1"] == reported["top1"]  # the adapter is the run's last weights: the run's own number
