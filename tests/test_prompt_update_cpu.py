"""vimtune.ops.prompt_update_cpu: SVP's prompt update by the C++ kernel against the plain ops in float64
(forward and every gradient, float32 and bfloat16 inputs), the same bits at any thread count, and what goes to
torch's ops instead."""

from __future__ import annotations

import pytest
import torch

from helpers.extremes import EXTREME_VALUES, assert_matches_torch_at_extremes
from helpers.profiling import profiled_ops
from vimtune.methods.prompt_update import prompt_update, prompt_update_reference
from vimtune.ops import prompt_update_cpu

pytestmark = pytest.mark.usefixtures("prompt_kernel")

KERNEL_OPS = {"vimtune_prompt_cpu::prompt_fwd", "vimtune_prompt_cpu::prompt_bwd"}


def _problem(seed: int, paths: int, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """h (B, T, D), [pre, scale] * paths, cotangent: random sizes (rows not a multiple of the kernel's 32-row
    blocks, D of any width)."""
    g = torch.Generator().manual_seed(seed)
    batch, tokens, width = (int(v) for v in torch.randint(1, 40, (3,), generator=g))
    tokens += 3
    h = torch.randn(batch, tokens, width, generator=g).to(dtype).requires_grad_()
    pairs = []
    for _ in range(paths):
        pairs += [(3 * torch.randn(batch, tokens, width, generator=g)).to(dtype).requires_grad_(),
                  torch.randn(width, generator=g, requires_grad=True)]
    return h, pairs, torch.randn(batch, tokens, width, generator=g)


def _reference(h: torch.Tensor, keep: int | None, pairs: list[torch.Tensor], cot: torch.Tensor):
    """The plain ops in float64 on the same values: output and the gradients of (h, *pairs)."""
    inputs = [t.detach().double().requires_grad_() for t in (h, *pairs)]
    out = prompt_update_reference(inputs[0], keep, *inputs[1:])
    return out, torch.autograd.grad(out, inputs, cot.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("paths", [1, 2])
@pytest.mark.parametrize("keep", [None, 0, 2, -1])
@pytest.mark.parametrize("seed", range(2))
def test_kernel_matches_the_plain_ops_in_float64(dtype: torch.dtype, paths: int, keep: int | None, seed: int) -> None:
    h, pairs, cot = _problem(seed, paths, dtype)
    inputs = (h, *pairs)
    assert profiled_ops(lambda: torch.autograd.grad(prompt_update(h, keep, *pairs), inputs, cot)) >= KERNEL_OPS
    out = prompt_update(h, keep, *pairs)
    grads = torch.autograd.grad(out, inputs, cot)
    want, want_grads = _reference(h, keep, pairs, cot)
    assert out.dtype == torch.float32
    if keep is not None:
        assert torch.equal(out[:, keep], h[:, keep].float())  # the kept token exactly as it came
    torch.testing.assert_close(out.double(), want, rtol=0, atol=2e-6 * want.abs().max().item())
    for index, (got, ref) in enumerate(zip(grads, want_grads, strict=True)):
        assert got.dtype == inputs[index].dtype
        scale = ref.abs().max().item()
        if got.dtype == torch.bfloat16:  # rounded once to bfloat16 from float32: within one bfloat16 step
            torch.testing.assert_close(got.double(), ref, rtol=2 ** -8, atol=1e-6 * scale)
        else:
            torch.testing.assert_close(got.double(), ref, rtol=0, atol=2e-6 * scale)
    if keep is not None:
        for pre_grad in grads[1::2]:
            assert not pre_grad[:, keep].any()


def test_the_same_bits_at_one_and_two_threads(torch_threads) -> None:
    h, pairs, cot = _problem(5, 2, torch.bfloat16)
    assert profiled_ops(lambda: torch.autograd.grad(prompt_update(h, 1, *pairs), pairs, cot)) >= KERNEL_OPS
    runs = []
    for threads in (1, 2):
        torch_threads(threads)
        out = prompt_update(h, 1, *pairs)
        runs.append((out, *torch.autograd.grad(out, (h, *pairs), cot)))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_only_the_gradients_asked_for() -> None:
    h, (pre, scale), cot = _problem(6, 1, torch.float32)
    scale.requires_grad_(False)
    (pre_grad,) = torch.autograd.grad(prompt_update(h, 0, pre, scale), pre, cot)
    scale.requires_grad_(True)
    pre.requires_grad_(False)
    (scale_grad,) = torch.autograd.grad(prompt_update(h, 0, pre, scale), scale, cot)
    pre.requires_grad_(True)
    both = torch.autograd.grad(prompt_update(h, 0, pre, scale), (pre, scale), cot)
    assert torch.equal(pre_grad, both[0]) and torch.equal(scale_grad, both[1])


def test_second_order_gradients_go_through_torchs_ops() -> None:
    h, (pre, scale), cot = _problem(7, 1, torch.float32)
    (got,) = torch.autograd.grad(prompt_update(h, 1, pre, scale), scale, cot, create_graph=True)
    (got2,) = torch.autograd.grad(got.square().sum(), pre)
    (want,) = torch.autograd.grad(prompt_update_reference(h, 1, pre, scale), scale, cot, create_graph=True)
    (want2,) = torch.autograd.grad(want.square().sum(), pre)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    torch.testing.assert_close(got2, want2, rtol=1e-4, atol=1e-5 * want2.abs().max().item())


@pytest.mark.parametrize("case", ["float64", "float16", "bfloat16 scales", "mixed pre dtypes"])
def test_what_the_kernel_does_not_take_goes_to_torchs_ops(case: str) -> None:
    h, pairs, _ = _problem(8, 2, torch.float32)
    h, pairs = h.detach(), [t.detach() for t in pairs]
    if case in ("float64", "float16"):
        dtype = torch.float64 if case == "float64" else torch.float16
        h, pairs = h.to(dtype), [t.to(dtype) for t in pairs]
    elif case == "bfloat16 scales":
        pairs[1] = pairs[1].bfloat16()
    else:
        pairs[0] = pairs[0].bfloat16()
    assert not KERNEL_OPS & profiled_ops(lambda: prompt_update(h, 1, *pairs))


def test_the_kernel_refuses_inputs_it_cannot_read() -> None:
    ops = prompt_update_cpu._ops()
    h, pre, scale = torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(8)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ops.prompt_fwd(h.double(), -1, [pre], [scale])
    with pytest.raises(RuntimeError, match="one scale per pre-activation"):
        ops.prompt_fwd(h, -1, [pre], [])
    with pytest.raises(RuntimeError, match=r"keep 5 needs h \(B, T, D\) with T > keep"):
        ops.prompt_fwd(h, 5, [pre], [scale])
    with pytest.raises(RuntimeError, match=r"every scale must be a contiguous float32 CPU tensor \(8,\)"):
        ops.prompt_bwd(h, -1, [pre], [torch.randn(7)], True, True)


def _torch_path(monkeypatch: pytest.MonkeyPatch, fn):
    """``fn()`` with the kernel turned off: PromptUpdate's torch ops."""
    with monkeypatch.context() as patch:
        patch.setattr("vimtune.methods.prompt_update.takes_kernel", lambda *args: False)
        return fn()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_and_non_finite_values_land_where_the_torch_ops_put_them(dtype: torch.dtype,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    h = torch.randn(2, 4, 8).to(dtype).requires_grad_()
    pre = torch.randn(2, 4, 8)
    pre[0, 1, :] = torch.tensor(EXTREME_VALUES)
    pre = pre.to(dtype).requires_grad_()
    scale = torch.randn(8, requires_grad=True)
    cot = torch.randn(2, 4, 8)

    def run():
        out = prompt_update(h, 3, pre, scale)
        return (out, *torch.autograd.grad(out, (pre, scale), cot))

    assert_matches_torch_at_extremes(run(), _torch_path(monkeypatch, run))


def test_strided_inputs_give_the_torch_ops_values(monkeypatch: pytest.MonkeyPatch) -> None:
    h, (pre, scale), cot = _problem(9, 1, torch.float32)
    h_t, pre_t = (t.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_() for t in (h, pre))
    assert not h_t.is_contiguous()

    def run():
        out = prompt_update(h_t, 2, pre_t, scale)
        return (out, *torch.autograd.grad(out, (h_t, pre_t, scale), cot))

    for got, want in zip(run(), _torch_path(monkeypatch, run), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_a_kept_token_out_of_range_is_an_error_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    h, pre, scale = torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(8)
    for keep in (5, -6):
        with pytest.raises(IndexError, match=f"keep_token {keep} is out of range for 5 tokens"):
            prompt_update(h, keep, pre, scale)
        with pytest.raises(IndexError, match="out of range"):
            _torch_path(monkeypatch, lambda: prompt_update(h, keep, pre, scale))  # noqa: B023
    assert torch.equal(prompt_update(h, 1), h)  # no pairs: h as it is
