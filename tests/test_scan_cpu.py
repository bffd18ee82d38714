"""The C++ CPU selective scan against the float64 reference: outputs, last states and all gradients."""

from __future__ import annotations

import pytest
import torch

from helpers.extremes import EXTREME_VALUES, assert_matches_torch_at_extremes
from helpers.scan_cases import make_scan_inputs
from vimtune.ops import scan_cpu
from vimtune.ops.scan_cpu import selective_scan_cpu
from vimtune.ops.scan_reference import selective_scan_reference

pytestmark = pytest.mark.usefixtures("scan_kernel")

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

# (batch, channels, length, state, delta_scale, with_optional, softplus, last_state)
CASES = [
    (2, 5, 1, 3, 1.0, True, True, True),  # L = 1
    (1, 33, 37, 16, 1.0, False, True, False),  # batch 1, odd L, no D / z / delta_bias
    (3, 20, 70, 4, 1.0, True, True, True),  # two time blocks (64 steps each), partial channel block
    (2, 20, 150, 16, 1.0, True, True, True),  # three time blocks, N = 16 (dL/dh carried in registers across them)
    (1, 16, 128, 16, 1.0, True, True, False),  # L an exact multiple of the time block
    (2, 17, 45, 16, 15.0, True, True, True),  # large |delta|: both sides of the softplus threshold
    (2, 16, 64, 8, 1e-3, True, False, True),  # tiny delta without softplus: long memory
    (1, 8, 2000, 4, 1.0, True, True, True),  # long L
    (1, 160, 130, 8, 1.0, True, True, True),  # 10 channel blocks: the backward splits them into groups; 3 time blocks
]


def _problem(case: tuple, dtype: torch.dtype, seed: int = 0) -> tuple[dict, dict, bool, bool]:
    """(inputs in dtype, the same values in float64, softplus, last_state); all leaves need grad."""
    batch, channels, length, state, scale, optional, softplus, last = case
    inputs = make_scan_inputs(batch, channels, length, state, torch.float64, seed, scale, optional)
    if not softplus:  # without softplus the step sizes must be positive for a stable scan
        inputs["delta"] = inputs["delta"].abs()
        if optional:
            inputs["delta_bias"] = inputs["delta_bias"].abs() * scale
    ref = {k: None if v is None else v.clone().requires_grad_() for k, v in inputs.items()}
    low = {k: None if v is None else v.to(dtype).requires_grad_() for k, v in inputs.items()}
    return low, ref, softplus, last


def _run(fn, inputs: dict, softplus: bool, last: bool) -> tuple[torch.Tensor, ...]:
    result = fn(**inputs, delta_softplus=softplus, return_last_state=last)
    return result if last else (result,)


def _grads(outputs: tuple, cotangents: tuple, inputs: dict) -> dict:
    """Gradients of sum(output * cotangent) with respect to every input that is given."""
    leaves = {k: v for k, v in inputs.items() if v is not None}
    loss = sum((o.double() * c).sum() for o, c in zip(outputs, cotangents, strict=True))
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, name: str) -> None:
    atol = rtol * max(expected.abs().max().item(), 1e-30)
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"-d{c[4]}")
def test_matches_reference_forward_and_backward(case: tuple, dtype: torch.dtype, rtol: float) -> None:
    low, ref, softplus, last = _problem(case, dtype)
    out_cpu = _run(selective_scan_cpu, low, softplus, last)
    out_ref = _run(selective_scan_reference, ref, softplus, last)
    for got, want, name in zip(out_cpu, out_ref, ("out", "last_state"), strict=False):
        assert got.dtype == dtype and got.shape == want.shape
        _close(got, want.detach(), rtol, name)
    g = torch.Generator().manual_seed(1)
    cotangents = tuple(torch.randn(o.shape, generator=g, dtype=torch.float64) for o in out_ref)
    grads_cpu = _grads(out_cpu, cotangents, low)
    grads_ref = _grads(out_ref, cotangents, ref)
    assert grads_cpu.keys() == grads_ref.keys()
    for name in grads_ref:
        assert grads_cpu[name].dtype == dtype
        _close(grads_cpu[name], grads_ref[name], rtol, f"d{name}")


def test_no_grad_forward_equals_autograd_forward() -> None:
    low, _, softplus, last = _problem(CASES[2], torch.float32)
    with torch.no_grad():
        plain = _run(selective_scan_cpu, low, softplus, last)
    tracked = _run(selective_scan_cpu, low, softplus, last)
    for a, b in zip(plain, tracked, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_empty_batch_gives_empty_outputs_and_zero_parameter_gradients(dtype: torch.dtype) -> None:
    """Batch 0: the kernel has no task to run; the gradients of A, D and delta_bias (sums over the batch)
    are zeros, the others empty."""
    inputs = {k: v.requires_grad_() for k, v in make_scan_inputs(0, 20, 37, 16, dtype, seed=5).items()}
    out, last = selective_scan_cpu(**inputs, delta_softplus=True, return_last_state=True)
    assert out.shape == (0, 20, 37) and last.shape == (0, 20, 16)
    grads = dict(zip(NAMES, torch.autograd.grad((out.sum() + last.sum()), [inputs[k] for k in NAMES]), strict=True))
    for name in NAMES:
        assert grads[name].shape == inputs[name].shape and grads[name].dtype == dtype, name
    for name in ("A", "D", "delta_bias"):
        assert torch.equal(grads[name], torch.zeros_like(grads[name])), name


def test_partial_requires_grad_and_noncontiguous_inputs() -> None:
    inputs = make_scan_inputs(2, 24, 40, 16, torch.float32, seed=3)
    u = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()  # (B, E, L) view
    A = inputs["A"].requires_grad_()
    rest = {k: v for k, v in inputs.items() if k not in ("u", "A")}
    out = selective_scan_cpu(u=u, A=A, delta_softplus=True, **rest)
    du, dA = torch.autograd.grad(out.sum(), [u, A])
    ref_in = {k: None if v is None else v.detach().double() for k, v in inputs.items()}
    ref_in["u"] = ref_in["u"].requires_grad_()
    ref_in["A"] = ref_in["A"].requires_grad_()
    ref_out = selective_scan_reference(**ref_in, delta_softplus=True)
    ref_du, ref_dA = torch.autograd.grad(ref_out.sum(), [ref_in["u"], ref_in["A"]])
    _close(out, ref_out.detach(), 1e-5, "out")
    _close(du, ref_du, 1e-5, "du")
    _close(dA, ref_dA, 1e-5, "dA")


def test_extreme_and_non_finite_gates_land_where_the_torch_ops_put_them() -> None:
    """z beyond float32's sigmoid range and +-inf / NaN, in a whole channel block (channel 3) and the partial
    last one (channel 17): output and every gradient have NaN and inf where the float32 reference has them,
    and close finite values (y silu(-3e38) = -0: the gate is not y z sigmoid(z), whose y z overflows)."""
    inputs = make_scan_inputs(2, 20, len(EXTREME_VALUES), 4, torch.float32, seed=6)
    inputs["z"][1, 3] = inputs["z"][1, 17] = torch.tensor(EXTREME_VALUES)
    cot = torch.randn(2, 20, len(EXTREME_VALUES), generator=torch.Generator().manual_seed(2))
    results = []
    for fn in (selective_scan_cpu, selective_scan_reference):
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        out = fn(**leaves, delta_softplus=True)
        results.append((out, *torch.autograd.grad(out, list(leaves.values()), cot)))
    assert_matches_torch_at_extremes(*results)


def test_bfloat16_inputs_follow_the_float64_reference() -> None:
    """bfloat16 in and out (computed in float32): output and every gradient within bfloat16 rounding of the
    float64 reference on the same values (observed at most 0.6% of the largest value; allowed 1.5%)."""
    inputs = make_scan_inputs(2, 20, 33, 16, torch.bfloat16, seed=4)
    leaves = {k: v.requires_grad_() for k, v in inputs.items()}
    out, last = selective_scan_cpu(**leaves, delta_softplus=True, return_last_state=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.bfloat16
    ref_in = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    ref = selective_scan_reference(**ref_in, delta_softplus=True)
    _close(out, ref.detach(), 1.5e-2, "out")
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * cot).sum(), list(leaves.values()))
    ref_grads = torch.autograd.grad((ref * cot).sum(), list(ref_in.values()))
    for name, g, r in zip(leaves, grads, ref_grads, strict=True):
        assert g.dtype == torch.bfloat16, name
        _close(g, r, 1.5e-2, f"d{name}")


def test_multi_group_case_splits_the_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """The (1, 160, 130, 8) case of CASES runs the backward in more than one channel group."""
    groups = []
    real = scan_cpu._backward_groups
    monkeypatch.setattr(scan_cpu, "_backward_groups", lambda *a: groups.append(real(*a)) or groups[-1])
    low, _, softplus, last = _problem(CASES[-1], torch.float32)
    _grads(_run(selective_scan_cpu, low, softplus, last), (torch.ones(1, 160, 130), torch.ones(1, 160, 8)), low)
    assert groups and groups[0] > 1


# (batch, channels, length, state): the backward takes 8, 2 and 1 channel groups per row, at any thread count
THREAD_CASES = [(4, 512, 40, 8), (1, 160, 130, 8), (3, 20, 70, 4)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", THREAD_CASES, ids=lambda c: "x".join(map(str, c)))
def test_one_and_two_threads_give_the_same_results(case: tuple, dtype: torch.dtype, torch_threads) -> None:
    """Forward and backward at 1 and at 2 threads: bit for bit the same, dB and dC included (their per-group
    float64 partials are added in an order set by the group count, which does not follow the thread count)."""
    batch, channels, length, state = case
    results = []
    for threads in (1, 2):
        torch_threads(threads)
        low, _, softplus, last = _problem((batch, channels, length, state, 1.0, True, True, True), dtype)
        outputs = _run(selective_scan_cpu, low, softplus, last)
        g = torch.Generator().manual_seed(1)
        cotangents = tuple(torch.randn(o.shape, generator=g, dtype=torch.float64) for o in outputs)
        results.append({"out": outputs[0], "last_state": outputs[1]} | _grads(outputs, cotangents, low))
    one, two = results
    for name in one:
        assert torch.equal(two[name], one[name]), name
