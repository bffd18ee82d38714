"""The mixer's gradient buffer: the backward kernels write dL/dx and dL/dz of ``in_proj``'s output into one
(B, T, 2E) tensor (the second direction adding to the first) instead of autograd adding and concatenating
them; the gradients must be those autograd gives, bit for bit."""

from __future__ import annotations

import pytest
import torch

from vimtune.models.mamba import BiMambaMixer
from vimtune.ops import mixer_cpu
from vimtune.ops.mixer_cpu import bimamba_forward_tm, causal_conv1d_silu, selective_scan_recompute_tm

pytestmark = pytest.mark.usefixtures("mixer_kernels")

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _halves(batch: int, length: int, channels: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A (B, T, 2E) buffer of garbage and its second half (B, T, E): a column slice, as the kernels get it."""
    buffer = torch.full((batch, length, 2 * channels), float("nan"), dtype=dtype)
    return buffer, buffer[..., channels:]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_conv_backward_writes_and_adds_into_a_column_slice(reverse: bool, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(7)
    batch, length, channels = 2, 37, 40  # 2.5 blocks of 16 channels: a partial block too
    param = torch.float64 if dtype == torch.float64 else torch.float32
    x, dout_a, dout_b = (torch.randn(batch, length, channels, generator=g).to(dtype) for _ in range(3))
    weight, bias = torch.randn(channels, 4, generator=g, dtype=param), torch.randn(channels, generator=g, dtype=param)
    ops = mixer_cpu._ops()
    dx_a = ops.conv_bwd(x, weight, bias, reverse, dout_a, True)[0]
    dx_b = ops.conv_bwd(x, weight, bias, not reverse, dout_b, False)[0]
    buffer, half = _halves(batch, length, channels, dtype)
    first = ops.conv_bwd(x, weight, bias, reverse, dout_a, True, half, False)
    assert first[0].numel() == 0  # dx went into the slice
    assert torch.equal(half, dx_a)
    ops.conv_bwd(x, weight, bias, not reverse, dout_b, False, half, True)
    assert torch.equal(half, dx_a + dx_b)  # the torch addition of the two rounded gradients
    assert buffer[..., :channels].isnan().all()  # the other half untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_backward_writes_and_adds_dz_into_a_column_slice(reverse: bool, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(8)
    batch, length, channels, state = 2, 37, 40, 16
    param = torch.float64 if dtype == torch.float64 else torch.float32
    u, delta, z, dout_a, dout_b = (torch.randn(batch, length, channels, generator=g).to(dtype) for _ in range(5))
    B, C = (torch.randn(batch, length, state, generator=g).to(dtype) for _ in range(2))
    A = -torch.rand(channels, state, generator=g, dtype=param) - 0.1
    D, bias = (torch.randn(channels, generator=g, dtype=param) for _ in range(2))
    ops = mixer_cpu._ops()
    scan = (u, delta, A, B, C, D, z, bias, True)
    grads_a = ops.scan_bwd(*scan, reverse, dout_a, True)
    grads_b = ops.scan_bwd(*scan, not reverse, dout_b, False)
    buffer, half = _halves(batch, length, channels, dtype)
    first = ops.scan_bwd(*scan, reverse, dout_a, True, half, False)
    assert first[2].numel() == 0  # dz went into the slice
    for index, (got, want) in enumerate(zip(first, grads_a, strict=True)):
        if index != 2:
            assert torch.equal(got, want), index  # every other gradient unchanged
    assert torch.equal(half, grads_a[2])
    ops.scan_bwd(*scan, not reverse, dout_b, False, half, True)
    assert torch.equal(half, grads_a[2] + grads_b[2])
    assert buffer[..., :channels].isnan().all()


def test_accumulating_without_an_output_is_an_error() -> None:
    x, weight, bias = torch.randn(1, 5, 16), torch.randn(16, 4), torch.randn(16)
    with pytest.raises(RuntimeError, match="accumulate needs dx_out"):
        mixer_cpu._ops().conv_bwd(x, weight, bias, False, torch.randn(1, 5, 16), False, None, True)
    with pytest.raises(RuntimeError, match=r"dx_out must be \(1, 5, 16\)"):
        mixer_cpu._ops().conv_bwd(x, weight, bias, False, torch.randn(1, 5, 16), False, torch.empty(1, 5, 8), False)


def _mixer_autograd_sums(mixer: BiMambaMixer, hidden: torch.Tensor) -> torch.Tensor:
    """The mixer's fast path composed from the public functions: autograd adds the two directions'
    gradients of x and z and concatenates them."""
    x, z = mixer.in_proj(hidden).split(mixer.d_inner, dim=-1)
    ys = []
    for reverse, conv, x_proj, dt_proj, A_log, D in (
        (False, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D),
        (True, mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log, mixer.D_b),
    ):
        u = causal_conv1d_silu(x, conv.weight, conv.bias, reverse)
        dt, Bm, Cm = x_proj(u).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
        A = -torch.exp(A_log.to(mixer_cpu._compute_dtype(x, A_log)))
        ys.append(selective_scan_recompute_tm(u, dt, dt_proj.weight, A, Bm, Cm, D, z, dt_proj.bias, x, conv.weight,
                                              conv.bias, True, reverse))
    return mixer.out_proj(ys[0].add_(ys[1]).div_(2))


def _grads(fn, mixer: BiMambaMixer, hidden: torch.Tensor, cot: torch.Tensor, autocast: bool) -> list[torch.Tensor]:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fn(mixer, hidden)
    return [out, *torch.autograd.grad((out.to(cot.dtype) * cot).sum(), [hidden, *mixer.parameters()])]


@pytest.mark.parametrize("precision", ["float32", "float64", "bf16-autocast", "float16"])
def test_mixer_gradients_equal_autograds_sums_bit_for_bit(precision: str) -> None:
    """float16 is computed by the kernels in float32, so its gradients reach the buffer by torch additions."""
    dtype = {"float64": torch.float64, "float16": torch.float16}.get(precision, torch.float32)
    torch.manual_seed(0)
    mixer = BiMambaMixer(24, scan_backend="cpu").to(dtype)  # E = 48: three channel blocks
    hidden = torch.randn(3, 29, 24, dtype=dtype, requires_grad=True)
    cot = torch.randn(3, 29, 24, dtype=dtype)
    autocast = precision == "bf16-autocast"
    fused = _grads(bimamba_forward_tm, mixer, hidden, cot, autocast)
    summed = _grads(_mixer_autograd_sums, mixer, hidden, cot, autocast)
    names = ["out", "hidden", *(name for name, _ in mixer.named_parameters())]
    for name, a, b in zip(names, fused, summed, strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("other_use", [True, False])
def test_gradient_buffer_adds_other_uses_zeroes_unwritten_halves_and_resets(other_use: bool) -> None:
    """x and z also used outside the kernels (their gradients added to the buffer), or z not used at all (its
    half zero); back-propagated twice through one graph, the buffer starts afresh for the second pass."""
    g = torch.Generator().manual_seed(2)
    xz = torch.randn(2, 11, 64, generator=g, requires_grad=True)
    weight, bias = torch.randn(32, 4, generator=g), torch.randn(32, generator=g)
    c1, c2 = torch.randn(2, 11, 32, generator=g), torch.randn(2, 11, 32, generator=g)

    def loss_of(x: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return (u * c1).sum() + ((x * z * c2).sum() if other_use else 0)

    into = mixer_cpu._InProjGrad(xz, 32)
    x, z = mixer_cpu._SplitXZ.apply(xz, into)
    loss = loss_of(x, z, mixer_cpu._ConvSiLU.apply(x, weight, bias, False, into))
    passes = [torch.autograd.grad(loss, xz, retain_graph=True)[0], torch.autograd.grad(loss, xz)[0]]
    x, z = xz.split(32, dim=-1)
    (want,) = torch.autograd.grad(loss_of(x, z, causal_conv1d_silu(x, weight, bias, False)), xz)
    if not other_use:
        assert not want[..., 32:].any()
    for got in passes:
        assert torch.equal(got, want)


@pytest.mark.parametrize("autocast", [False, True])
def test_backward_adds_the_two_gradients_of_u_in_place(autocast: bool) -> None:
    """u feeds x_proj and the scan; the scan's backward hands autograd its dL/du as a tensor nothing else shares,
    so autograd adds x_proj's dL/du to it in place instead of allocating a (B, T, E) sum per direction."""
    torch.manual_seed(3)
    mixer = BiMambaMixer(24, scan_backend="cpu")  # E = 48
    hidden = torch.randn(2, 29, 24, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = bimamba_forward_tm(mixer, hidden).float().pow(2).sum()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        loss.backward()
    activation = [2, 29, mixer.d_inner]
    adds = [(event.name, event.input_shapes[:2]) for event in prof.events()
            if event.name in ("aten::add", "aten::add_") and event.input_shapes[:1] == [activation]]
    assert ("aten::add_", [activation, activation]) in adds
    assert not [add for add in adds if add[0] == "aten::add"], adds
