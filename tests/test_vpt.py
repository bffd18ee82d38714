"""Visual prompt tuning: prompt placement, the cls index, deep replacement."""

from __future__ import annotations

import pytest
import torch

from helpers.tiny_models import images, tiny  # TINY: 16 patches, cls at 8
from vimtune.methods import EmbedPrompts, build


@pytest.mark.parametrize("position, num_tokens, cls_index, prompt_slots", [
    ("prefix", 4, 12, [0, 1, 2, 3]),
    ("suffix", 4, 8, [17, 18, 19, 20]),
    ("middle", 4, 10, [8, 9, 11, 12]),
    ("middle", 3, 10, [8, 9, 11]),
])
def test_prompts_shift_the_cls_index(position: str, num_tokens: int, cls_index: int, prompt_slots: list[int]) -> None:
    model = build("vpt-shallow", num_tokens=num_tokens, position=position).attach(tiny())
    x = images()
    with torch.no_grad():
        tokens, index = model.embed(x)
    assert index == cls_index == model.cls_index(16)
    assert tokens.shape == (2, 17 + num_tokens, 32)
    real_cls = model.cls_token[0, 0] + model.pos_embed[0, 8]
    assert torch.equal(tokens[0, index], real_cls)
    prompts = model.embed_hook.prompts
    assert torch.equal(tokens[1, prompt_slots], prompts)
    patches = [i for i in range(17 + num_tokens) if i not in prompt_slots and i != index]
    model.embed_hook = None
    with torch.no_grad():
        plain, plain_index = model.embed(x)
    assert plain_index == 8
    assert torch.equal(tokens[:, patches], plain[:, [i for i in range(17) if i != 8]])


@pytest.mark.parametrize("position", ["prefix", "middle", "suffix"])
def test_pool_picks_the_real_cls_token(position: str) -> None:
    model = build("vpt-deep", num_tokens=3, position=position).attach(tiny()).eval()
    with torch.no_grad():
        features = model.forward_features(images())
        cls_index = model.cls_index(16)
        assert torch.equal(model.forward_head(features, pre_logits=True), features[:, cls_index])
        assert model(images(size=40)).shape == (2, 10)  # another input size: 25 patches


@pytest.mark.parametrize("position", ["prefix", "middle", "suffix"])
def test_remove_inverts_insert(position: str) -> None:
    hook = EmbedPrompts(num_tokens=5, dim=6, position=position, patch_pixels=12)
    tokens = torch.randn(2, 9, 6)
    prompted, index = hook.insert(tokens, 4)
    restored, restored_index = hook.remove(prompted, index)
    assert torch.equal(restored, tokens) and restored_index == 4


def test_deep_prompts_replace_the_residual_prompt_tokens() -> None:
    model = build("vpt-deep", num_tokens=4, position="middle").attach(tiny())
    assert model.layers[0].residual_hook is None
    hook = model.layers[2].residual_hook
    residual = torch.randn(2, 21, 32)
    with torch.no_grad():
        out = hook(residual, 10)
    assert torch.equal(out[:, [8, 9, 11, 12]], hook.prompts.expand(2, -1, -1))
    others = [i for i in range(21) if i not in (8, 9, 11, 12)]
    assert torch.equal(out[:, others], residual[:, others])


def test_deep_prompt_count() -> None:
    method = build("vpt-deep", num_tokens=5)
    model = method.attach(tiny())
    names = {n for n, _ in method.trainable_parameters(model) if not n.startswith("head.")}
    assert names == {"embed_hook.prompts"} | {f"layers.{i}.residual_hook.prompts" for i in (1, 2, 3)}
    assert method.describe(model)["trainable"] == 4 * 5 * 32 + 32 * 10 + 10
