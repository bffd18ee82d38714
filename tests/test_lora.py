"""LoRA on the mixer linears: placement, the dt_proj weight path, merging, dropout, and peft parity."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers.tiny_models import images, perturb, tiny
from vimtune.methods import LoRALinear, build, merge_lora
from vimtune.methods.lora import TARGETS


def perturb_updates(model: torch.nn.Module, seed: int = 1) -> None:
    """Move the LoRA factors (zero-initialised ``up``) away from their initial values."""
    perturb([p for name, p in model.named_parameters() if ".lora." in name], seed)


def test_module_targets_keep_the_backbone_names() -> None:
    model = tiny()
    backbone_state = copy.deepcopy(model.state_dict())
    weight = model.layers[1].mixer.in_proj.weight
    build("lora", targets=["in_proj", "out_proj", "x_proj_b"]).attach(model)
    mixer = model.layers[1].mixer
    assert isinstance(mixer.in_proj, LoRALinear) and mixer.in_proj.weight is weight
    result = model.load_state_dict(backbone_state, strict=False)
    assert not result.unexpected_keys and all(".lora." in key for key in result.missing_keys)


@pytest.mark.parametrize("target", ["dt_proj", "dt_proj_b", "x_proj", "out_proj"])
def test_every_target_changes_the_output(target: str) -> None:
    model = build("lora", rank=2, targets=[target]).attach(tiny()).eval()
    with torch.no_grad():
        before = model(images())
        perturb_updates(model)
        assert not torch.allclose(model(images()), before, atol=1e-6)


def test_merge_gives_the_same_output() -> None:
    model = tiny().eval()
    backbone_keys = set(model.state_dict())
    method = build("lora", rank=4, alpha=16, targets=list(TARGETS))
    method.attach(model)
    perturb_updates(model)
    with torch.no_grad():
        unmerged = model(images())
        method.merge(model)
        merged = model(images())
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert set(model.state_dict()) == backbone_keys
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert [n for n, _ in method.trainable_parameters(model)] == ["head.weight", "head.bias"]


def test_dropout_acts_in_training_only() -> None:
    model = build("lora", dropout=0.5).attach(tiny())
    perturb_updates(model)
    with torch.no_grad():
        assert not torch.equal(model.train()(images()), model(images()))
        assert torch.equal(model.eval()(images()), model(images()))


def test_matches_peft_on_the_same_layers() -> None:
    peft = pytest.importorskip("peft")
    targets = ["in_proj", "x_proj_b", "out_proj"]
    ours = tiny().eval()
    reference = copy.deepcopy(ours)
    build("lora", rank=4, alpha=8, targets=targets).attach(ours)
    perturb_updates(ours)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets)
    theirs = peft.inject_adapter_in_model(config, reference).eval()
    with torch.no_grad():
        for ours_layer, their_layer in zip(ours.layers, theirs.layers, strict=True):
            for target in targets:
                mine, other = getattr(ours_layer.mixer, target), getattr(their_layer.mixer, target)
                other.lora_A["default"].weight.copy_(mine.lora.down)
                other.lora_B["default"].weight.copy_(mine.lora.up)
        torch.testing.assert_close(ours(images()), theirs(images()), rtol=1e-5, atol=1e-5)
        merge_lora(ours)
        torch.testing.assert_close(ours(images()), theirs(images()), rtol=1e-5, atol=1e-5)
