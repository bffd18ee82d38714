"""The pure-PyTorch selective-scan backends against the sequential float64 reference."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.scan_cases import make_scan_inputs
from vimtune.ops.scan_chunked import selective_scan_chunked
from vimtune.ops.scan_reference import selective_scan_reference

SHAPES = [  # (batch, channels, length, state)
    (1, 3, 1, 4),
    (2, 5, 7, 3),
    (1, 4, 33, 16),
    (3, 2, 64, 5),
    (2, 3, 301, 8),
]


def _grads(fn, inputs: dict, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    out, last = fn(**leaves, delta_softplus=True, return_last_state=True, **kwargs)
    weights = torch.randn_like(out)
    ((out * weights).sum() + last.square().sum()).backward()
    return torch.cat([out.flatten(), last.flatten()]).detach(), {k: v.grad for k, v in leaves.items()}


def test_reference_matches_explicit_recurrence() -> None:
    """The oracle itself, against a literal per-(b, e, n) loop of SPEC-VIM section 3."""
    x = make_scan_inputs(2, 3, 6, 2, seed=1)
    out = selective_scan_reference(**x, delta_softplus=True)
    expected = torch.zeros_like(out)
    for b in range(2):
        for e in range(3):
            h = [0.0, 0.0]
            for t in range(6):
                d = float(torch.nn.functional.softplus(x["delta"][b, e, t] + x["delta_bias"][e]))
                y = 0.0
                for n in range(2):
                    drive = d * float(x["B"][b, n, t] * x["u"][b, e, t])
                    h[n] = math.exp(d * float(x["A"][e, n])) * h[n] + drive
                    y += float(x["C"][b, n, t]) * h[n]
                y += float(x["D"][e] * x["u"][b, e, t])
                z = float(x["z"][b, e, t])
                expected[b, e, t] = y * z / (1 + math.exp(-z))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("chunk_size", [1, 4, 16])
def test_chunked_forward_backward_float64(shape: tuple[int, int, int, int], chunk_size: int) -> None:
    x = make_scan_inputs(*shape, seed=sum(shape) + chunk_size)
    torch.manual_seed(0)
    ref_out, ref_grads = _grads(selective_scan_reference, x)
    torch.manual_seed(0)
    out, grads = _grads(selective_scan_chunked, x, chunk_size=chunk_size)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("delta_scale", [1e-3, 30.0])
def test_chunked_stable_for_extreme_delta_float32(delta_scale: float) -> None:
    """Huge steps (decay exp(-1000)) and tiny ones must not overflow or lose accuracy."""
    x = make_scan_inputs(2, 4, 50, 16, seed=3, delta_scale=delta_scale)
    ref = selective_scan_reference(**x, delta_softplus=True)
    x32 = {k: None if v is None else v.float() for k, v in x.items()}
    out = selective_scan_chunked(**x32, delta_softplus=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_chunked_long_sequence_float32() -> None:
    x = make_scan_inputs(1, 4, 3000, 16, seed=4)
    ref = selective_scan_reference(**x, delta_softplus=True)
    x32 = {k: None if v is None else v.float() for k, v in x.items()}
    out = selective_scan_chunked(**x32, delta_softplus=True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_without_optional_inputs_and_softplus() -> None:
    x = make_scan_inputs(2, 3, 9, 4, seed=5, with_optional=False)
    x["delta"] = x["delta"].abs()
    ref = selective_scan_reference(**x)
    torch.testing.assert_close(selective_scan_chunked(**x, chunk_size=4), ref, rtol=1e-10, atol=1e-10)

