"""Checkpoint loading: the release's .pth layout, plain state dicts, safetensors, adaptation, errors."""

from __future__ import annotations

import argparse
import collections
import hashlib
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from vimtune.models import CheckpointError, create_vim, load_checkpoint, read_state_dict


def tiny_release_model(**kwargs) -> torch.nn.Module:
    """vim_tiny (depth 24, the release's 415 keys) at 64 px so that tests stay fast."""
    torch.manual_seed(0)
    return create_vim("vim_tiny_patch16_224", img_size=64, **kwargs).eval()


def write_release_checkpoint(model: torch.nn.Module, path: Path, ema_state: dict | None = None) -> None:
    """The release's top-level layout: model, optimizer, lr_scheduler, epoch, model_ema, scaler, args."""
    state = model.state_dict()
    checkpoint = {
        "model": state,
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                      "param_groups": [{"lr": 1e-3, "weight_decay": 0.05, "params": [0]}]},
        "lr_scheduler": {"decay_t": 300, "t_in_epochs": True, "base_values": [0.001]},
        "epoch": 299,
        "model_ema": ema_state if ema_state is not None else state,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0},
        "args": argparse.Namespace(model="vim_tiny_patch16_224", batch_size=128, lr=5e-4, drop_path=0.0,
                                   data_path="/data/imagenet", color_jitter=0.3, input_size=224),
    }
    torch.save(checkpoint, path)


def test_release_layout_loads_through_loader_and_timm(tmp_path: Path) -> None:
    model = tiny_release_model()
    path = tmp_path / "vim_t_midclstok_76p1acc.pth"
    ema = {k: v + 1.0 for k, v in model.state_dict().items()}  # EMA weights differ: must not be used
    write_release_checkpoint(model, path, ema_state=ema)
    raw = torch.load(path, weights_only=False)
    assert list(raw) == ["model", "optimizer", "lr_scheduler", "epoch", "model_ema", "scaler", "args"]
    assert len(raw["model"]) == 415
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        fresh = create_vim("vim_tiny_patch16_224", img_size=64).eval()
        report = load_checkpoint(fresh, path)
        assert report.reset_keys == []
        assert torch.equal(fresh(images), expected)
        via_timm = timm.create_model("vim_tiny_patch16_224", pretrained=True, img_size=64,
                                     pretrained_cfg_overlay=dict(file=str(path))).eval()
        assert torch.equal(via_timm(images), expected)


def test_use_ema_picks_ema_weights(tmp_path: Path) -> None:
    model = tiny_release_model()
    path = tmp_path / "ckpt.pth"
    ema = {k: v * 0 + 0.5 for k, v in model.state_dict().items()}
    write_release_checkpoint(model, path, ema_state=ema)
    assert torch.equal(read_state_dict(path, use_ema=True)["cls_token"], torch.full((1, 1, 192), 0.5))
    assert torch.equal(read_state_dict(path)["cls_token"], model.cls_token.detach())


@pytest.mark.parametrize("fmt", ["state_dict", "module_prefix", "safetensors"])
def test_plain_formats(tmp_path: Path, fmt: str) -> None:
    model = tiny_release_model(num_classes=4, depth=2)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "w.pth"
        torch.save({f"module.{k}": v for k, v in state.items()} if fmt == "module_prefix" else state, path)
    fresh = tiny_release_model(num_classes=4, depth=2)
    with torch.no_grad():
        fresh.cls_token.zero_()
    load_checkpoint(fresh, path)
    assert torch.equal(fresh.cls_token, model.cls_token)


def test_new_class_count_resets_head_only(tmp_path: Path) -> None:
    model = tiny_release_model(depth=2)
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    target = create_vim("vim_tiny_patch16_224", img_size=64, depth=2, num_classes=10)
    report = load_checkpoint(target, path)
    assert report.reset_keys == ["head.bias", "head.weight"]
    assert torch.equal(target.layers[1].mixer.A_log, model.layers[1].mixer.A_log)
    headless = create_vim("vim_tiny_patch16_224", img_size=64, depth=2, num_classes=0)
    assert any("no head" in note for note in load_checkpoint(headless, path).notes)


def test_pos_embed_resized_for_other_size_and_stride(tmp_path: Path) -> None:
    model = tiny_release_model(depth=2)  # 4x4 grid
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    target = create_vim("vim_tiny_patch16_224", img_size=64, stride=8, depth=2)  # 7x7 grid
    with pytest.raises(CheckpointError, match="stride-16 weights for a stride-8 model"):
        load_checkpoint(target, path)  # the 4x4 grid is what stride 16 gives at 64 px
    report = load_checkpoint(target, path, allow_stride_change=True)
    assert target.pos_embed.shape == (1, 50, 192)
    assert torch.equal(target.pos_embed[0, 24], model.pos_embed[0, 8])  # cls slot moved to the new middle
    assert any("pos_embed resized" in note for note in report.notes)


def test_wrong_architecture_lists_keys(tmp_path: Path) -> None:
    path = tmp_path / "small.pth"
    torch.save(create_vim("vim_small_patch16_224", img_size=64, depth=3).state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    target = create_vim("vim_tiny_patch16_224", img_size=64, depth=2)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target, path)
    message = str(info.value)
    assert "unexpected keys: layers.2." in message
    assert "mis-shaped keys" in message
    assert "layers.0.mixer.in_proj.weight: checkpoint (1536, 384) vs model (768, 192)" in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    missing = create_vim("vim_tiny_patch16_224", img_size=64, depth=3)
    state = missing.state_dict()
    del state["norm_f.weight"]
    with pytest.raises(CheckpointError, match="1 missing keys: norm_f.weight"):
        load_checkpoint(missing, state)


class Payload:
    """A class a malicious pickle could name: must never be instantiated by the loader."""


def test_arbitrary_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": collections.OrderedDict(), "args": Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .* safely"):
        read_state_dict(path)


def test_missing_file_and_no_release(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        read_state_dict(tmp_path / "nope.pth")
    with pytest.raises(RuntimeError, match="No pretrained weights exist for vim_nano_patch4_32"):
        timm.create_model("vim_nano_patch4_32", pretrained=True)
