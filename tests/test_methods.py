"""The method protocol: building, attaching, freezing, gradients, state, artifacts, composition, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from helpers.tiny_models import TINY, images, perturb, tiny
from vimtune.cli import main
from vimtune.methods import available_methods, build, from_config, load_adapter, save_adapter
from vimtune.models import CheckpointError

COMPOSITIONS = ["svp+lora", "vpt-deep+adapter", "bias+lora"]


def test_available_methods() -> None:
    assert set(available_methods()) == {
        "linear", "bias", "full", "vpt-shallow", "vpt-deep", "lora", "adapter", "svp"
    }


def test_unknown_method_lists_available() -> None:
    with pytest.raises(ValueError, match="svp"):
        build("spv")


def test_unknown_option_names_valid_options() -> None:
    with pytest.raises(TypeError, match=r"rnak.*valid options.*rank.*group_size"):
        build("svp", rnak=3)
    with pytest.raises(TypeError, match="valid options: none"):
        build("linear", rank=3)


def test_option_values_are_checked() -> None:
    with pytest.raises(TypeError, match="rank must be an integer"):
        build("svp", rank="64")
    with pytest.raises(TypeError, match="inner must be bool"):
        build("svp", inner=1)
    with pytest.raises(ValueError, match="variant"):
        build("svp", variant="compat")
    with pytest.raises(ValueError, match="both be off"):
        build("svp", inner=False, cross=False)
    with pytest.raises(ValueError, match="targets"):
        build("lora", targets=["q_proj"])
    assert build("lora", targets=["in_proj", "dt_proj"], alpha=16).options.targets == ("in_proj", "dt_proj")
    assert build("lora", alpha=16).options.alpha == 16.0


@pytest.mark.parametrize("name", available_methods() + COMPOSITIONS)
def test_config_round_trips_through_json(name: str) -> None:
    method = build(name)
    config = json.loads(json.dumps(method.to_config()))
    assert config["name"] == name
    assert from_config(config).to_config() == method.to_config()


@pytest.mark.parametrize("name", ["linear", "bias", "full", "lora", "adapter", "svp", "svp+lora"])
def test_attached_model_starts_as_the_backbone(name: str) -> None:
    model = tiny().eval()
    with torch.no_grad():
        before = model(images())
    build(name).attach(model)
    with torch.no_grad():
        assert torch.equal(model(images()), before)


@pytest.mark.parametrize("name", available_methods() + COMPOSITIONS)
def test_gradients_reach_exactly_the_trainable_parameters(name: str) -> None:
    torch.manual_seed(0)
    method = build(name)
    model = method.attach(tiny(), num_classes=5)
    trainable = dict(method.trainable_parameters(model))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trainable)
    assert any(n.startswith("head.") for n in trainable)
    perturb(list(trainable.values()))
    logits = model(images())
    (logits * torch.randn_like(logits)).sum().backward()
    for pname, param in model.named_parameters():
        if pname in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, pname
        else:
            assert param.grad is None, pname


def test_trained_sets_per_method() -> None:
    model = tiny()
    total = sum(p.numel() for p in model.parameters())
    head = 32 * 10 + 10
    assert build("linear").describe(build("linear").attach(tiny())) == {
        "trainable": head, "total": total, "share": head / total}
    full = build("full")
    assert full.describe(full.attach(tiny()))["trainable"] == total
    bias = build("bias")
    names = {n for n, _ in bias.trainable_parameters(bias.attach(tiny()))}
    assert "layers.2.mixer.dt_proj_b.bias" in names and "layers.1.norm.weight" in names
    assert "norm_f.weight" in names and "patch_embed.proj.bias" in names
    assert "layers.1.mixer.in_proj.weight" not in names and "layers.0.mixer.D" not in names


def test_no_weight_decay_names() -> None:
    for name, expected in [("linear", set()), ("full", {"pos_embed", "cls_token"}),
                           ("svp", {"svp.beta", "svp.alpha"}), ("svp+lora", {"svp.beta", "svp.alpha"})]:
        method = build(name)
        assert method.no_weight_decay_names(method.attach(tiny())) == expected, name


def test_head_is_reset_only_when_needed() -> None:
    model = tiny(num_classes=10)
    head = model.head
    build("linear").attach(model)
    assert model.head is head
    build("linear").attach(model, num_classes=10)
    assert model.head is head
    build("linear").attach(model, num_classes=3)
    assert model.head.out_features == 3 and model.num_classes == 3
    assert model(images()).shape == (2, 3)


def test_attach_refuses_other_models_and_double_attach() -> None:
    with pytest.raises(TypeError, match="VisionMamba"):
        build("svp").attach(torch.nn.Linear(3, 3))
    model = build("svp").attach(tiny())
    with pytest.raises(RuntimeError, match="already"):
        build("svp").attach(model)


def test_load_trainable_state_is_strict() -> None:
    method = build("svp", rank=4, group_size=2)
    model = method.attach(tiny())
    state = dict(method.trainable_state(model))
    state.pop("svp.beta")
    state["svp.gamma"] = torch.zeros(1)
    state["svp.alpha"] = torch.zeros(3, 32)
    with pytest.raises(CheckpointError) as err:
        method.load_trainable_state(model, state)
    message = str(err.value)
    assert "missing: svp.beta" in message and "unexpected: svp.gamma" in message
    assert "svp.alpha: state (3, 32) vs model (2, 32)" in message


@pytest.mark.parametrize("name", ["svp", "lora", "vpt-deep+adapter"])
def test_adapter_round_trips_bit_exactly(name: str, tmp_path) -> None:
    options = {"targets": ["in_proj", "dt_proj_b"]} if name == "lora" else {}
    backbone = tiny()
    save_file(backbone.state_dict(), str(tmp_path / "backbone.safetensors"))
    method = build(name, **options)
    model = method.attach(backbone, num_classes=7)
    perturb([p for _, p in method.trainable_parameters(model)])
    save_adapter(model, method, tmp_path / "adapter",
                 backbone={"name": "vim_small_patch16_224", "kwargs": TINY})
    config = json.loads((tmp_path / "adapter" / "adapter.json").read_text())
    assert config["num_classes"] == 7 and config["method"] == json.loads(json.dumps(method.to_config()))

    loaded, loaded_method = load_adapter(tmp_path / "adapter", backbone_weights=tmp_path / "backbone.safetensors")
    assert loaded_method.to_config() == method.to_config()
    expected, got = method.trainable_state(model), loaded_method.trainable_state(loaded)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(images()), loaded(images()))


def test_load_adapter_reports_a_missing_directory(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="adapter.json"):
        load_adapter(tmp_path)


def test_composition_routes_prefixed_options() -> None:
    method = build("svp+lora", svp_rank=4, svp_group_size=2, lora_rank=2, lora_targets=["out_proj"])
    model = method.attach(tiny())
    names = {n for n, _ in method.trainable_parameters(model)}
    assert model.svp.inner[0].down.weight.shape == (4, 32)
    assert "layers.3.mixer.out_proj.lora.down" in names and "svp.alpha" in names
    assert model.layers[0].mixer.out_proj.lora.down.shape == (2, 64)
    vpt = build("vpt-deep+lora", vpt_deep_num_tokens=3)
    assert vpt.parts[0].options.num_tokens == 3


@pytest.mark.parametrize("name, match", [
    ("full+linear", "does not combine"),
    ("svp+full", "does not combine"),
    ("vpt-shallow+vpt-deep", "embed_hook"),
    ("lora+lora", "more than once"),
])
def test_composition_refuses(name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(name)


def test_composition_rejects_unprefixed_options() -> None:
    with pytest.raises(TypeError, match=r"rank.*valid options.*svp_rank"):
        build("svp+lora", rank=4)


def test_methods_cli_table(capsys) -> None:
    assert main(["methods", "--model", "vim_nano_patch4_32", "--num-classes", "10",
                 "--methods", "linear", "svp", "svp+lora"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| `")}
    assert set(rows) == {"`linear`", "`svp`", "`svp+lora`"}
    # vim_nano: width D = 64, 4 blocks; SVP defaults rank 64, group size 8 (one group):
    # inner 4 x 2 x (64 x 64 + 64) + cross 64 x 64 + 64 + beta 4 x 64 + alpha 64 + head 64 x 10 + 10 = 38,410
    assert "| 38,410 |" in rows["`svp`"]
    assert "| 650 |" in rows["`linear`"]  # 64 * 10 + 10
