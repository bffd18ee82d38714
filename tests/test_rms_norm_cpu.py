"""vimtune.ops.rms_norm_cpu: the C++ RMSNorm against torch's rms_norm in float64 (forward, both gradients,
second order), float32 against float64, the same bits at any thread count, and what goes to torch instead."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.profiling import profiled_ops
from vimtune.models.mamba import RMSNorm
from vimtune.ops import rms_norm_cpu
from vimtune.ops.rms_norm_cpu import rms_norm

pytestmark = pytest.mark.usefixtures("norm_kernel")

KERNEL_OPS = {"vimtune_norm_cpu::rms_norm_fwd", "vimtune_norm_cpu::rms_norm_bwd"}


def _random_problem(seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, T, D), weight (D,), cotangent: random sizes (rows not a multiple of the kernel's 32-row blocks,
    D of any width), values of several scales."""
    g = torch.Generator().manual_seed(seed)
    batch, tokens, width = (int(v) for v in torch.randint(1, 50, (3,), generator=g))
    x = torch.randn(batch, tokens, width, generator=g, dtype=dtype) * 10 ** float(torch.rand(1, generator=g) * 4 - 2)
    weight = torch.randn(width, generator=g, dtype=dtype)
    return x, weight, torch.randn(batch, tokens, width, generator=g, dtype=dtype)


@pytest.mark.parametrize("seed", range(6))
def test_forward_and_gradients_match_torch_in_float64(seed: int) -> None:
    x, weight, cot = _random_problem(seed, torch.float64)
    x.requires_grad_()
    weight.requires_grad_()
    got = rms_norm(x, weight, 1e-5)
    want = F.rms_norm(x, (x.shape[-1],), weight, 1e-5)
    for a, b in zip(torch.autograd.grad(got, (x, weight), cot), torch.autograd.grad(want, (x, weight), cot),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * b.abs().max().item())
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0)


@pytest.mark.parametrize("seed", range(4))
def test_float32_matches_the_float64_reference(seed: int) -> None:
    x, weight, cot = _random_problem(seed, torch.float32)
    x.requires_grad_()
    weight.requires_grad_()
    assert profiled_ops(lambda: torch.autograd.grad(rms_norm(x, weight, 1e-5), x, cot)) >= KERNEL_OPS
    got = rms_norm(x, weight, 1e-5)
    grads = torch.autograd.grad(got, (x, weight), cot)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, weight))
    want = F.rms_norm(x64, (x.shape[-1],), w64, 1e-5)
    for a, b in zip((got, *grads), (want, *torch.autograd.grad(want, (x64, w64), cot.double())), strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=0, atol=2e-6 * b.abs().max().item())


def test_gradients_are_the_same_bits_at_one_and_two_threads(torch_threads) -> None:
    x, weight, cot = _random_problem(11, torch.float32)
    x = torch.cat([x] * 8).requires_grad_()  # more rows than one 32-row block per thread
    weight.requires_grad_()
    runs = []
    for threads in (1, 2):
        torch_threads(threads)
        out = rms_norm(x, weight, 1e-5)
        runs.append((out, *torch.autograd.grad(out, (x, weight), torch.cat([cot] * 8))))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("wanted", ["x", "weight", "both"])
def test_second_order_gradients_match_torch(wanted: str) -> None:
    x, weight, _ = _random_problem(3, torch.float64)
    x = x[:2, :5].clone().requires_grad_(wanted != "weight")
    weight.requires_grad_(wanted != "x")
    assert torch.autograd.gradgradcheck(lambda a, b: rms_norm(a, b, 1e-5), (x, weight))


@pytest.mark.parametrize("shape", [(0, 7, 24), (3, 5, 1), (1, 1, 24)], ids=["no rows", "D = 1", "one row"])
def test_edge_shapes_match_torch(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(shape[-1], dtype=torch.float64, requires_grad=True)
    cot = torch.randn(*shape, dtype=torch.float64)
    got, want = rms_norm(x, weight, 1e-5), F.rms_norm(x, (shape[-1],), weight, 1e-5)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, (x, weight), cot), torch.autograd.grad(want, (x, weight), cot),
                    strict=True):
        torch.testing.assert_close(a, b)


def test_non_finite_values_land_where_torchs_do() -> None:
    x = torch.randn(4, 6, 32)
    x[0, 1, 3], x[1, 2, 0], x[2, 0, 5], x[3, 4, 7] = float("nan"), float("inf"), -float("inf"), 1e30  # 1e30^2 overflows
    weight = torch.randn(32)
    got, want = rms_norm(x, weight, 1e-5), F.rms_norm(x, (32,), weight, 1e-5)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
    finite = want.isfinite()
    torch.testing.assert_close(got[finite], want[finite])


def test_inference_mode_with_grad_enabled_inside_gives_a_plain_output() -> None:
    """As F.rms_norm does: nothing is saved for backward from inside inference mode."""
    weight = torch.randn(24, requires_grad=True)
    with torch.inference_mode(), torch.enable_grad():
        out = rms_norm(torch.randn(2, 7, 24), weight, 1e-5)
    assert out.grad_fn is None


@pytest.mark.filterwarnings("ignore:`torch.jit.(script|trace|trace_method)` is deprecated:FutureWarning")
def test_the_module_scripts_and_traces_with_torchs_op() -> None:
    """TorchScript and torch.fx see torch's rms_norm (TorchScript) or one call of vimtune's (fx), with the same
    values as the module in eager mode."""
    norm, x = RMSNorm(24), torch.randn(2, 7, 24)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    eager = norm(x)
    torch.testing.assert_close(torch.jit.script(norm)(x), eager)
    torch.testing.assert_close(torch.jit.trace(norm, x)(x), eager)
    traced = torch.fx.symbolic_trace(norm)
    assert [node.target.__name__ for node in traced.graph.nodes if node.op == "call_function"][-1] == "rms_norm"
    torch.testing.assert_close(traced(x), eager)


def test_only_the_gradients_asked_for_are_computed() -> None:
    x, weight, cot = _random_problem(4, torch.float32)
    x.requires_grad_()
    out = rms_norm(x, weight, 1e-5)  # a frozen weight
    (dx,) = torch.autograd.grad(out, x, cot)
    want = torch.autograd.grad(F.rms_norm(x, (x.shape[-1],), weight, 1e-5), x, cot)[0]
    torch.testing.assert_close(dx, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    ops = rms_norm_cpu._ops()
    rstd = ops.rms_norm_fwd(x.detach(), weight, 1e-5)[1]
    dx_only, dw_none = ops.rms_norm_bwd(cot, x.detach(), weight, rstd, True, False)
    assert torch.equal(dx_only, dx) and dw_none.numel() == 0
    dx_none, dw_only = ops.rms_norm_bwd(cot, x.detach(), weight, rstd, False, True)
    assert dx_none.numel() == 0 and dw_only.shape == weight.shape


def test_a_strided_input_is_read_as_its_values() -> None:
    x, weight, cot = _random_problem(5, torch.float64)
    columns = x.transpose(0, 1).requires_grad_()  # not contiguous
    weight.requires_grad_()
    got, want = rms_norm(columns, weight, 1e-5), F.rms_norm(columns, (x.shape[-1],), weight, 1e-5)
    torch.testing.assert_close(got, want)
    cot = cot.transpose(0, 1)
    for a, b in zip(torch.autograd.grad(got, (columns, weight), cot),
                    torch.autograd.grad(want, (columns, weight), cot), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("case", ["bfloat16", "weight of another dtype", "forward-mode AD"])
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight:UserWarning")  # torch's, as expected
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch's forward AD, not ours
def test_what_the_kernel_does_not_take_goes_to_torch(case: str) -> None:
    x, weight = torch.randn(2, 7, 24), torch.randn(24)
    if case == "bfloat16":
        x, weight = x.bfloat16(), weight.bfloat16()
    elif case == "weight of another dtype":
        weight = weight.double()
    if case == "forward-mode AD":
        import torch.autograd.forward_ad as fwAD

        def run():
            with fwAD.dual_level():
                return rms_norm(fwAD.make_dual(x, torch.ones_like(x)), weight, 1e-5)
    else:
        def run():
            return rms_norm(x, weight, 1e-5)
    assert not KERNEL_OPS & profiled_ops(run)


def test_the_kernel_refuses_inputs_it_cannot_read() -> None:
    ops = rms_norm_cpu._ops()
    with pytest.raises(RuntimeError, match="x must be float32 or float64, got BFloat16"):
        ops.rms_norm_fwd(torch.randn(3, 8).bfloat16(), torch.randn(8).bfloat16(), 1e-5)
    with pytest.raises(RuntimeError, match=r"weight must be contiguous \(8,\)"):
        ops.rms_norm_fwd(torch.randn(3, 8), torch.randn(7), 1e-5)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        ops.rms_norm_fwd(torch.randn(8, 3).t(), torch.randn(8), 1e-5)
    with pytest.raises(RuntimeError, match=r"rstd must be contiguous \(3,\)"):
        ops.rms_norm_bwd(torch.randn(3, 8), torch.randn(3, 8), torch.randn(8), torch.randn(4), True, True)


def test_autograd_adds_another_gradient_of_x_in_place() -> None:
    """In a Vim block the residual stream feeds the norm and the next block's sum; the norm's dx is the
    kernel's own tensor (not a view), so autograd may add the other gradient to it in place."""
    residual = torch.randn(2, 29, 24, requires_grad=True)
    norm = RMSNorm(24)
    loss = (norm(residual).pow(2).sum() + (residual * 3).sum())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        loss.backward()
    adds = [event.name for event in prof.events()
            if event.name in ("aten::add", "aten::add_") and event.input_shapes[:1] == [[2, 29, 24]]]
    assert adds == ["aten::add_"]
