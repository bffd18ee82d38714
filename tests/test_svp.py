"""Selective Visual Prompting: exact form, variants, counts, extras, and the release import."""

from __future__ import annotations

import argparse
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from helpers.tiny_models import images, perturb, tiny
from vimtune.cli import main
from vimtune.methods import SelectivePrompts, build, from_svp_release, load_adapter, simam
from vimtune.methods.prompt_update import prompt_update, prompt_update_reference
from vimtune.models import CheckpointError


# ---------------------------------------------------------------- oracle of SPEC-SVP section 2
def inner_ref(bank: SelectivePrompts, layer: int, t: torch.Tensor) -> torch.Tensor:
    down, up = bank.inner[layer].down, bank.inner[layer].up
    return F.silu((t @ down.weight.T + down.bias) @ up.weight.T + up.bias)


def cross_ref(bank: SelectivePrompts, layer: int, t: torch.Tensor) -> torch.Tensor:
    cross = bank.cross[layer // bank.group_size]
    return F.silu(t @ cross.weight.T + cross.bias)


def prompt_ref(bank: SelectivePrompts, layer: int, own: torch.Tensor, cross_input: torch.Tensor) -> torch.Tensor:
    inner = bank.beta[layer] * inner_ref(bank, layer, own)
    return own + inner + bank.alpha[layer // bank.group_size] * cross_ref(bank, layer, cross_input)


def release_ref(bank: SelectivePrompts, layer: int, hidden: torch.Tensor, cls: int) -> torch.Tensor:
    """The release's in-place order, token by token: tokens before the cls token are prompted
    first; the j-th token after it then feeds the (already prompted) j-th token to the cross path."""
    out = hidden.clone()
    for j in range(cls):
        out[:, j] = prompt_ref(bank, layer, hidden[:, j], hidden[:, j])
    for k in range(cls + 1, hidden.shape[1]):
        j = k - cls - 1
        source = out[:, j] if j < cls else hidden[:, k]
        out[:, k] = prompt_ref(bank, layer, hidden[:, k], source)
    return out


def random_bank(variant: str) -> SelectivePrompts:
    torch.manual_seed(0)
    bank = SelectivePrompts(dim=8, depth=3, rank=4, group_size=2, variant=variant)
    perturb(bank.parameters())
    return bank


@pytest.mark.parametrize("length, cls", [(9, 4), (10, 4), (8, 4), (5, 0)])
@pytest.mark.parametrize("layer", [0, 2])
def test_paper_variant_is_the_spec_formula(length: int, cls: int, layer: int) -> None:
    bank = random_bank("paper")
    hidden = torch.randn(2, length, 8)
    with torch.no_grad():
        got = bank(hidden, cls, layer)
        expected = prompt_ref(bank, layer, hidden, hidden)
    assert torch.equal(got[:, cls], hidden[:, cls])  # the cls token is never prompted
    keep = [i for i in range(length) if i != cls]
    torch.testing.assert_close(got[:, keep], expected[:, keep])


@pytest.mark.parametrize("length, cls", [(9, 4), (10, 4), (8, 4)])
@pytest.mark.parametrize("layer", [0, 2])
def test_release_variant_feeds_prompted_pre_cls_tokens_to_the_cross_path(length: int, cls: int, layer: int) -> None:
    paper, release = random_bank("paper"), random_bank("release")
    hidden = torch.randn(2, length, 8)
    with torch.no_grad():
        got = release(hidden, cls, layer)
        paper_out = paper(hidden, cls, layer)
        raw_pre = prompt_ref(release, layer, hidden[:, cls + 1:cls + 1 + cls], hidden[:, :cls][:, :length - cls - 1])
    torch.testing.assert_close(got, release_ref(release, layer, hidden, cls))
    assert torch.equal(got[:, :cls + 1], paper_out[:, :cls + 1])  # up to the cls token: as in the paper
    assert not torch.allclose(got[:, cls + 1:], paper_out[:, cls + 1:])
    # the cross input is the prompted pre-cls token, not its raw value
    paired = min(cls, length - cls - 1)
    assert not torch.allclose(got[:, cls + 1:cls + 1 + paired], raw_pre[:, :paired])
    if length - cls - 1 > cls:  # a token without counterpart uses its own value, as in the paper
        torch.testing.assert_close(got[:, -1], paper_out[:, -1])


def test_variants_agree_without_the_cross_path() -> None:
    torch.manual_seed(0)
    paper, release = build("svp", rank=4, group_size=2, cross=False), build(
        "svp", rank=4, group_size=2, cross=False, variant="release")
    a, b = paper.attach(tiny()).eval(), release.attach(tiny()).eval()
    b.load_state_dict(a.state_dict())
    perturb([p for _, p in paper.trainable_parameters(a)])
    release.load_trainable_state(b, paper.trainable_state(a))
    with torch.no_grad():
        assert torch.equal(a(images()), b(images()))
    cross_paper, cross_release = build("svp", rank=4, group_size=2), build("svp", rank=4, group_size=2,
                                                                             variant="release")
    a, b = cross_paper.attach(tiny()).eval(), cross_release.attach(tiny()).eval()
    b.load_state_dict(a.state_dict())
    perturb([p for _, p in cross_paper.trainable_parameters(a)])
    cross_release.load_trainable_state(b, cross_paper.trainable_state(a))
    with torch.no_grad():
        assert not torch.allclose(a(images()), b(images()))


def test_zero_scales_give_the_backbone_and_nonzero_scales_change_it() -> None:
    model = tiny().eval()
    with torch.no_grad():
        backbone = model(images())
    build("svp", rank=4, group_size=2, variant="release").attach(model)
    perturb([p for n, p in model.named_parameters() if n.startswith("svp.") and n not in ("svp.beta", "svp.alpha")])
    with torch.no_grad():
        assert torch.equal(model(images()), backbone)
        model.svp.beta[1].fill_(0.5)
        assert not torch.allclose(model(images()), backbone)


def test_prompts_are_inserted_before_every_block() -> None:
    method = build("svp", rank=4, group_size=3)
    model = method.attach(tiny())
    assert [layer.prompter.layer for layer in model.layers] == [0, 1, 2, 3]
    assert all(layer.prompter.prompts is model.svp for layer in model.layers)
    assert model.svp.alpha.shape == (2, 32) and len(model.svp.cross) == 2  # ceil(4 / 3) groups
    assert model.svp.beta.shape == (4, 32)
    assert not any(".prompter." in key for key in model.state_dict())  # stored once, under svp.


def test_odd_patch_counts_work_in_both_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    """81 patches (one more token after the cls token than before it), float64: each variant's model output
    equals the same model with its prompt bank replaced by the plain formula, and the variants differ."""
    x = images(size=36).double()  # 9 x 9 = 81 patches with 4-pixel patches
    outputs = {}
    for variant in ("paper", "release"):
        torch.manual_seed(0)
        method = build("svp", rank=4, group_size=2, variant=variant)
        model = method.attach(timm.create_model("vim_nano_patch4_32", num_classes=3, depth=2, scan_backend="chunked"))
        model = model.double().eval()
        perturb([p for _, p in method.trainable_parameters(model)])
        with torch.no_grad(), monkeypatch.context() as patch:
            outputs[variant] = model(x)
            patch.setattr(SelectivePrompts, "forward", plain_prompts)
            expected = model(x)
        assert outputs[variant].shape == (2, 3)
        torch.testing.assert_close(outputs[variant], expected, rtol=1e-12, atol=1e-12)
    assert (outputs["paper"] - outputs["release"]).abs().max() > 1e-3


@pytest.mark.parametrize("group_size, expected", [(8, 1_644_288), (12, 1_496_064), (6, 1_792_512),
                                                  (4, 2_088_960), (24, 1_347_840)])
def test_vim_small_prompt_counts_match_the_spec(group_size: int, expected: int) -> None:
    method = build("svp", rank=64, group_size=group_size)
    with torch.device("meta"):
        model = method.attach(timm.create_model("vim_small_patch16_224", num_classes=10))
    counts = method.describe(model)
    assert counts["trainable"] - (384 * 10 + 10) == expected
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("svp.")) == expected


def test_ablations_drop_their_parameters() -> None:
    inner_only = build("svp", rank=4, group_size=2, cross=False).attach(tiny())
    cross_only = build("svp", rank=4, group_size=2, inner=False).attach(tiny())
    assert inner_only.svp.cross is None and inner_only.svp.alpha is None
    assert cross_only.svp.inner is None and cross_only.svp.beta is None
    assert {n for n, _ in cross_only.svp.named_parameters()} == {
        "alpha", "cross.0.weight", "cross.0.bias", "cross.1.weight", "cross.1.bias"}


def test_two_layer_head() -> None:
    method = build("svp", rank=4, group_size=2, head="two-layer")
    model = method.attach(tiny(num_classes=10))
    assert model.head[0].weight.shape == (16, 32) and model.head[1].weight.shape == (10, 16)
    names = {n for n, _ in method.trainable_parameters(model)}
    assert {"head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"} <= names
    assert model(images()).shape == (2, 10)
    with pytest.raises(ValueError, match="num_classes > 0"):
        build("svp", head="two-layer").attach(tiny(num_classes=0))


def test_simam_formula_and_hook() -> None:
    x = images()
    flat = x.flatten(2)
    mu, var = flat.mean(-1, keepdim=True), flat.var(-1, keepdim=True, unbiased=True)
    expected = flat * torch.sigmoid((flat - mu) ** 2 / (4 * (var + 1e-3)) + 0.5)
    torch.testing.assert_close(simam(x), expected.view_as(x))

    plain = build("svp", rank=4, group_size=2).attach(tiny()).eval()
    with_simam = build("svp", rank=4, group_size=2, simam=True).attach(tiny()).eval()
    with_simam.load_state_dict(plain.state_dict())  # same names: SimAM has no parameters
    with torch.no_grad():
        expected = plain.forward_head(plain.forward_blocks(*plain.embed(simam(x))))
        torch.testing.assert_close(with_simam(x), expected)
        assert not torch.allclose(with_simam(x), plain(x))
        torch.testing.assert_close(copy.deepcopy(with_simam)(x), expected)


# ---------------------------------------------------------------- the release's checkpoints
def release_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under the release's names (SPEC-SVP section 6), written out by hand."""
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("svp.")}
    state["prompt_scale"] = model.svp.beta.detach().clone()
    state["prompt_shared_scale"] = model.svp.alpha.detach().clone()
    for layer, gen in enumerate(model.svp.inner):
        for index, linear in enumerate((gen.down, gen.up)):
            state[f"prompt_generator.{layer}.{index}.weight"] = linear.weight.detach().clone()
            state[f"prompt_generator.{layer}.{index}.bias"] = linear.bias.detach().clone()
    for group, linear in enumerate(model.svp.cross):
        state[f"prompt_generator_shared.{group}.0.weight"] = linear.weight.detach().clone()
        state[f"prompt_generator_shared.{group}.0.bias"] = linear.bias.detach().clone()
    return state


@pytest.fixture(params=["linear", "two-layer"])
def release_run(request, tmp_path):
    """An SVP model (release variant) with random weights and its checkpoint in the release layout."""
    torch.manual_seed(0)
    method = build("svp", rank=8, group_size=2, variant="release", head=request.param)
    model = method.attach(timm.create_model("vim_nano_patch4_32", num_classes=7)).eval()
    perturb([p for _, p in method.trainable_parameters(model)])
    path = tmp_path / "svp_release.pth"
    torch.save({"model": release_state(model), "epoch": 99, "args": argparse.Namespace(lr=1e-3)}, path)
    return model, path


def test_release_checkpoint_imports_to_the_same_model(release_run) -> None:
    model, path = release_run
    imported = from_svp_release(path, backbone="vim_nano_patch4_32", group_size=2, rank=8).eval()
    assert imported.num_classes == 7 and type(imported.head) is type(model.head)
    with torch.no_grad():
        assert torch.equal(imported(images()), model(images()))


def test_release_import_with_another_class_count(release_run) -> None:
    model, path = release_run
    imported = from_svp_release(path, backbone="vim_nano_patch4_32", group_size=2, rank=8, num_classes=3)
    assert imported(images()).shape == (2, 3)
    assert torch.equal(imported.svp.beta, model.svp.beta)


def test_release_import_errors(release_run) -> None:
    model, path = release_run
    with pytest.raises(CheckpointError, match=r"2 cross-prompter groups.*group_size=1"):
        from_svp_release(path, backbone="vim_nano_patch4_32", group_size=1, rank=8)
    with pytest.raises(CheckpointError, match="rank 8, not rank=64"):
        from_svp_release(path, backbone="vim_nano_patch4_32", group_size=2)
    with pytest.raises(CheckpointError, match="not an SVP release checkpoint"):
        from_svp_release(timm.create_model("vim_nano_patch4_32").state_dict(), backbone="vim_nano_patch4_32")


def test_convert_cli_writes_a_loadable_adapter(release_run, tmp_path) -> None:
    model, path = release_run
    out, weights = tmp_path / "adapter", tmp_path / "backbone.safetensors"
    assert main(["convert", "--from", "svp-release", str(path), str(out), "--backbone", "vim_nano_patch4_32",
                 "--group-size", "2", "--rank", "8", "--backbone-weights-out", str(weights)]) == 0
    loaded, method = load_adapter(out, backbone_weights=weights)
    assert method.options.variant == "release"
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images()), model(images()))


def test_convert_cli_infers_the_group_size_and_records_the_backbone(release_run, tmp_path) -> None:
    model, path = release_run
    out, weights = tmp_path / "adapter", tmp_path / "backbone.safetensors"
    assert main(["convert", "--from", "svp-release", str(path), str(out), "--backbone", "vim_nano_patch4_32",
                 "--rank", "8", "--backbone-weights-out", str(weights)]) == 0
    loaded, method = load_adapter(out)  # the backbone file is found through adapter.json's record
    assert method.options.group_size == 2
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images()), model(images()))


# ---------------------------------------------------------------- memory-lean prompter: same numbers
def plain_prompts(bank: SelectivePrompts, hidden: torch.Tensor, cls: int, layer: int) -> torch.Tensor:
    """The straightforward form (slices, ``beta * F.silu(...)``, cat) of both variants."""
    def delta(own: torch.Tensor, cross_input: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(own)
        if bank.inner is not None:
            gen = bank.inner[layer]
            out = out + bank.beta[layer] * F.silu(gen.up(gen.down(own)))
        if bank.cross is not None:
            group = layer // bank.group_size
            out = out + bank.alpha[group] * F.silu(bank.cross[group](cross_input))
        return out

    pre, cls_token, post = hidden[:, :cls], hidden[:, cls:cls + 1], hidden[:, cls + 1:]
    pre = pre + delta(pre, pre)
    cross_post = post
    if bank.variant == "release":
        count = min(pre.shape[1], post.shape[1])
        cross_post = torch.cat([pre[:, :count], post[:, count:]], dim=1)
    post = post + delta(post, cross_post)
    return torch.cat([pre, cls_token, post], dim=1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("variant", ["paper", "release"])
@pytest.mark.parametrize("paths", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_prompter_matches_the_plain_formula_in_float64(seed: int, variant: str, paths: tuple[bool, bool],
                                                       where: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    pick = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    batch, length, dim = pick(1, 3), pick(2, 12), pick(3, 9)
    rank, depth, group_size = pick(1, 4), pick(1, 5), pick(1, 4)  # group sizes that do not divide the depth too
    cls = {"start": 0, "middle": length // 2, "end": length - 1}[where]
    layer = pick(0, depth - 1)
    torch.manual_seed(seed)
    bank = SelectivePrompts(dim, depth, rank, group_size, inner=paths[0], cross=paths[1], variant=variant).double()
    perturb(bank.parameters(), seed=seed + 1)  # nonzero scales
    hidden = torch.randn(batch, length, dim, dtype=torch.float64, generator=gen, requires_grad=True)
    upstream = torch.randn(batch, length, dim, dtype=torch.float64, generator=gen)
    params = list(bank.parameters())

    got = bank(hidden, cls, layer)
    expected = plain_prompts(bank, hidden, cls, layer)
    assert got.dtype == torch.float64 and got.shape == hidden.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(got[:, cls], hidden[:, cls])  # bitwise unchanged cls token
    grads = torch.autograd.grad(got, [hidden, *params], upstream, allow_unused=True, materialize_grads=True)
    ref_grads = torch.autograd.grad(expected, [hidden, *params], upstream, allow_unused=True,
                                    materialize_grads=True)
    for (name, _), g, r in zip([("input", None), *bank.named_parameters()], grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_paper_prompter_keeps_the_cls_token_bitwise_and_accepts_a_non_contiguous_input() -> None:
    bank = random_bank("paper")
    hidden = torch.randn(2, 8, 7).transpose(1, 2)  # (2, 7, 8), not contiguous
    hidden[:, 3, :2] = -0.0
    with torch.no_grad():
        got = bank(hidden, 3, 1)
        expected = plain_prompts(bank, hidden, 3, 1)
    assert torch.signbit(got[:, 3, :2]).all()  # -0.0 stays -0.0 (adding a zero delta would give +0.0)
    assert torch.equal(got[:, 3], hidden[:, 3])
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------- the fused prompt update
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("paths", [1, 2])
@pytest.mark.parametrize("keep", [None, 0, 2])
def test_prompt_update_matches_the_plain_ops_in_float64(seed: int, paths: int, keep: int | None) -> None:
    gen = torch.Generator().manual_seed(seed)
    batch, length, dim = (int(n) for n in torch.randint(1, 6, (3,), generator=gen))
    shape = (batch, length + 3, dim)
    h = torch.randn(shape, dtype=torch.float64, generator=gen).requires_grad_()
    pairs = []
    for _ in range(paths):
        pairs += [(3 * torch.randn(shape, dtype=torch.float64, generator=gen)).requires_grad_(),
                  torch.randn(dim, dtype=torch.float64, generator=gen, requires_grad=True)]
    upstream = torch.randn(shape, dtype=torch.float64, generator=gen)
    got, expected = prompt_update(h, keep, *pairs), prompt_update_reference(h, keep, *pairs)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)
    if keep is not None:
        assert torch.equal(got[:, keep], h[:, keep])
    inputs = (h, *pairs)
    for g, r in zip(torch.autograd.grad(got, inputs, upstream), torch.autograd.grad(expected, inputs, upstream),
                    strict=True):
        torch.testing.assert_close(g, r, rtol=1e-13, atol=1e-13)
    assert torch.autograd.gradcheck(lambda *x: prompt_update(x[0], keep, *x[1:]), inputs)


def test_prompt_update_computes_only_the_gradients_asked_for() -> None:
    h, pre, scale = torch.randn(2, 4, 3), torch.randn(2, 4, 3, requires_grad=True), torch.randn(3)
    prompt_update(h, 1, pre, scale).sum().backward()
    assert pre.grad is not None and h.grad is None and scale.grad is None
    assert torch.all(pre.grad[:, 1] == 0) and torch.all(pre.grad[:, 0] != 0)  # the kept token sends nothing
    h, pre, scale = torch.randn(2, 4, 3, requires_grad=True), torch.randn(2, 4, 3), torch.randn(3, requires_grad=True)
    prompt_update(h, 1, pre, scale).sum().backward()
    assert torch.equal(h.grad, torch.ones_like(h))
    torch.testing.assert_close(scale.grad, F.silu(pre[:, [0, 2, 3]]).sum((0, 1)))
    with pytest.raises(ValueError, match="every scale"):
        prompt_update(torch.randn(2, 4, 3), None, torch.randn(2, 4, 3), torch.randn(4))
    with pytest.raises(ValueError, match=r"h must be \(B, T, D\)"):
        prompt_update(torch.randn(4, 3), 0, torch.randn(4, 3), torch.randn(3))


@pytest.mark.parametrize("h_dtype, pre_dtype, scale_dtype", [
    (torch.float32, torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.bfloat16, torch.float32), (torch.float32, torch.float32, torch.float32)])
def test_prompt_update_low_precision_dtypes(h_dtype: torch.dtype, pre_dtype: torch.dtype,
                                            scale_dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    h32, pre32, s32 = torch.randn(2, 5, 16, generator=gen), 2 * torch.randn(2, 5, 16, generator=gen), \
        torch.randn(16, generator=gen)
    h, pre, scale = (t.to(d).requires_grad_() for t, d in ((h32, h_dtype), (pre32, pre_dtype), (s32, scale_dtype)))
    out = prompt_update(h, 3, pre, scale)
    assert out.dtype == prompt_update_reference(h, 3, pre, scale).dtype  # the dtype of the plain expression
    assert torch.equal(out[:, 3], h[:, 3].to(out.dtype))
    out.float().square().sum().backward()
    assert (h.grad.dtype, pre.grad.dtype, scale.grad.dtype) == (h_dtype, pre_dtype, scale_dtype)
    ref_inputs = [t.detach().double().requires_grad_() for t in (h, pre, scale)]
    ref = prompt_update_reference(ref_inputs[0], 3, *ref_inputs[1:])
    ref.square().sum().backward()
    low = torch.bfloat16 in (h_dtype, pre_dtype, scale_dtype)
    tol = dict(rtol=3e-2, atol=3e-2) if low else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    for got, expected in zip((h.grad, pre.grad, scale.grad), (t.grad for t in ref_inputs), strict=True):
        torch.testing.assert_close(got.double(), expected, **(dict(rtol=5e-2, atol=5e-2) if low else tol))


def test_prompter_under_autocast_matches_the_plain_formula() -> None:
    bank = random_bank("paper")
    hidden = torch.randn(2, 9, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = bank(hidden, 4, 1)
        expected = plain_prompts(bank, hidden, 4, 1)
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
    params = [hidden, *bank.parameters()]
    grad = lambda out: torch.autograd.grad(out.float().sum(), params, allow_unused=True,  # noqa: E731
                                           materialize_grads=True)
    for g, r in zip(grad(got), grad(expected), strict=True):
        assert g.dtype == r.dtype
        torch.testing.assert_close(g, r, rtol=5e-2, atol=5e-2)


# ---------------------------------------------------------------- what the prompter keeps for backward
def saved_bytes(run, exclude) -> int:
    """Bytes of the distinct storages autograd saves while ``run()`` builds its graph, parameters excluded."""
    skip = {p.untyped_storage().data_ptr() for p in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    assert out.requires_grad
    return sum(seen.values())


def test_paper_prompter_saves_three_activations_per_layer() -> None:
    batch, length, dim, rank = 4, 65, 48, 8
    bank = SelectivePrompts(dim, depth=4, rank=rank, group_size=3)
    # the mixer output of the block before: a fresh (B, T, D) float32 tensor
    hidden = torch.randn(batch, length, dim, requires_grad=True) * 1.0
    full, bottleneck = batch * length * dim * 4, batch * length * rank * 4
    budget = 3 * full + bottleneck + 1024  # input t, up's and cross's pre-activations, down's output, small stuff
    got = saved_bytes(lambda: bank(hidden, length // 2, 1), bank.parameters())
    assert got <= budget, (got / full, budget / full)
    plain = saved_bytes(lambda: plain_prompts(bank, hidden, length // 2, 1), bank.parameters())
    assert plain > budget + full  # the straightforward form keeps about six
