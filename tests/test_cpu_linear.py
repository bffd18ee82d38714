"""vimtune.ops.cpu_linear: float32 CPU linears through oneDNN, against the float64 reference, and the choice
of backend (VIMTUNE_CPU_MATMUL, the CPU's vendor, the size threshold, autocast)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.profiling import profiled_ops
from vimtune.ops import cpu_linear
from vimtune.ops.cpu_linear import ENV_VAR, MIN_MACS, Linear, cpu_matmul_backend, linear

needs_onednn = pytest.mark.skipif(cpu_linear._onednn_linear() is None, reason="this torch build has no oneDNN")


@pytest.fixture
def onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "onednn")


@needs_onednn
@pytest.mark.parametrize("seed", range(4))
def test_forward_and_gradients_match_float64(onednn: None, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    batch, tokens = (int(v) for v in torch.randint(1, 9, (2,), generator=generator))
    width, out = (int(v) for v in torch.randint(64, 400, (2,), generator=generator))
    tokens = max(tokens * 40, MIN_MACS // (batch * width * out) + 1)  # above the oneDNN threshold
    wide = torch.randn(batch, tokens, width + 5, generator=generator)
    x = wide[..., 3:3 + width].requires_grad_()  # a column slice, read in place
    weight = torch.randn(out, width, generator=generator, requires_grad=True)
    bias = torch.randn(out, generator=generator, requires_grad=True)
    grad = torch.randn(batch, tokens, out, generator=generator)

    assert "mkldnn::_linear_pointwise" in profiled_ops(lambda: linear(x, weight, bias))
    y = linear(x, weight, bias)
    gx, gw, gb = torch.autograd.grad(y, (x, weight, bias), grad)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    y64 = F.linear(x64, w64, b64)
    rx, rw, rb = torch.autograd.grad(y64, (x64, w64, b64), grad.double())
    for got, ref in ((y, y64), (gx, rx), (gw, rw), (gb, rb)):
        assert got.dtype == torch.float32 and got.shape == ref.shape
        scale = ref.abs().max().item()
        torch.testing.assert_close(got.double(), ref, rtol=0, atol=2e-6 * scale)


@needs_onednn
def test_frozen_weight_keeps_no_activation(onednn: None) -> None:
    """As with F.linear, a frozen layer saves only its weight for backward, not its input."""
    x = torch.randn(8, 197, 192, requires_grad=True)
    weight = torch.randn(768, 192)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = linear(x, weight)
    assert [t.shape for t in saved] == [weight.shape]
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, weight.sum(0).expand_as(x), rtol=1e-5, atol=1e-4)


@needs_onednn
def test_small_products_autocast_and_float64_take_f_linear(onednn: None) -> None:
    big, small = torch.randn(64, 384), torch.randn(8, 384)
    weight = torch.randn(192, 384)
    assert 64 * 384 * 192 >= MIN_MACS > 8 * 384 * 192
    assert "mkldnn::_linear_pointwise" in profiled_ops(lambda: linear(big, weight))
    assert "mkldnn::_linear_pointwise" not in profiled_ops(lambda: linear(small, weight))
    assert "mkldnn::_linear_pointwise" not in profiled_ops(lambda: linear(big.double(), weight.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(big, weight).dtype == torch.bfloat16  # autocast's cast, as F.linear does


def test_choice_comes_from_the_environment_and_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "torch")
    assert cpu_matmul_backend() == "torch"
    monkeypatch.setenv(ENV_VAR, "mkl")
    with pytest.raises(ValueError, match=rf"{ENV_VAR}='mkl': expected one of auto, onednn, torch"):
        cpu_matmul_backend()
    monkeypatch.setenv(ENV_VAR, "auto")
    monkeypatch.setattr(cpu_linear, "_onednn_linear", lambda: object())
    for vendor, flags, expected in (("AuthenticAMD", "fpu avx2 avx512f", "onednn"),
                                    ("AuthenticAMD", "fpu avx2", "torch"),
                                    ("GenuineIntel", "fpu avx2 avx512f amx_bf16", "torch")):
        monkeypatch.setattr(cpu_linear, "cpuinfo_fields", lambda v=vendor, f=flags: {"vendor_id": v, "flags": f})
        cpu_linear._avx512_outside_intel.cache_clear()
        try:
            assert cpu_matmul_backend() == expected, vendor + " " + flags
        finally:
            cpu_linear._avx512_outside_intel.cache_clear()
    monkeypatch.setenv(ENV_VAR, "onednn")
    monkeypatch.setattr(cpu_linear, "_onednn_linear", lambda: None)
    with pytest.raises(RuntimeError, match="no oneDNN"):
        cpu_matmul_backend()


@needs_onednn
def test_linear_module_is_a_drop_in_nn_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same state dict as nn.Linear; the oneDNN and torch choices agree to float32 rounding."""
    plain = torch.nn.Linear(384, 192)
    layer = Linear(384, 192)
    layer.load_state_dict(plain.state_dict())
    assert isinstance(layer, torch.nn.Linear) and list(layer.state_dict()) == ["weight", "bias"]
    x = torch.randn(4, 197, 384)
    monkeypatch.setenv(ENV_VAR, "onednn")
    fast = layer(x)
    monkeypatch.setenv(ENV_VAR, "torch")
    torch.testing.assert_close(fast, plain(x), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_double_backward_matches_float64(onednn: None) -> None:
    """The backward is made of linear calls, so a gradient of a gradient (e.g. a gradient penalty) works."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(64, 384, generator=generator, requires_grad=True)
    weight = torch.randn(192, 384, generator=generator, requires_grad=True)
    assert "mkldnn::_linear_pointwise" in profiled_ops(lambda: linear(x, weight))

    def penalty_grad(lin, x, weight):
        (gx,) = torch.autograd.grad(lin(x, weight).pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), weight)[0]

    got = penalty_grad(linear, x, weight)
    ref = penalty_grad(F.linear, x.detach().double().requires_grad_(), weight.detach().double().requires_grad_())
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-5 * ref.abs().max().item())


@needs_onednn
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch's forward AD, not ours
def test_forward_mode_and_torch_func_get_f_linear(onednn: None) -> None:
    """oneDNN's operator has no forward-mode formula: under a dual level or a torch.func transform, linear
    computes with F.linear, so tangents and transformed gradients are those of F.linear."""
    import torch.autograd.forward_ad as fwAD

    x, weight, bias = torch.randn(64, 384), torch.randn(192, 384), torch.randn(192)
    tangents = torch.randn_like(x), torch.randn_like(weight), torch.randn_like(bias)
    with fwAD.dual_level():
        out = linear(*(fwAD.make_dual(p, t) for p, t in zip((x, weight, bias), tangents, strict=True)))
        tangent = fwAD.unpack_dual(out).tangent
    expected = F.linear(tangents[0], weight) + F.linear(x, tangents[1]) + tangents[2]
    assert tangent is not None
    torch.testing.assert_close(tangent, expected, rtol=1e-5, atol=1e-4)

    grad = torch.func.grad(lambda w: linear(x, w, bias).pow(2).sum())(weight)
    torch.testing.assert_close(grad, torch.func.grad(lambda w: F.linear(x, w, bias).pow(2).sum())(weight))
    jacobian = torch.func.jacrev(lambda rows: linear(rows, weight).sum(0))(x)
    assert jacobian.shape == (192, 64, 384)
    torch.testing.assert_close(jacobian[:, 5], weight)


@needs_onednn
@pytest.mark.parametrize("out", [256, 2048])  # a gradient narrower than the input, and one wider
def test_overlapping_rows(onednn: None, out: int) -> None:
    """An input whose rows overlap (a sliding window) gets its weight gradient; a weight whose rows overlap
    (which oneDNN cannot describe) is left to F.linear."""
    windows = torch.randn(2048 * 64 + 512).as_strided((2048, 512), (64, 1))
    weight = torch.randn(out, 512, requires_grad=True)
    (got,) = torch.autograd.grad(linear(windows, weight).pow(2).sum(), weight)
    weight64 = weight.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(F.linear(windows.double(), weight64).pow(2).sum(), weight64)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    shared_rows = torch.randn(256 * 16 + 512).as_strided((256, 512), (16, 1))
    assert "mkldnn::_linear_pointwise" not in profiled_ops(lambda: linear(torch.randn(2048, 512), shared_rows))


def test_linear_module_traces_with_fx() -> None:
    layer = Linear(384, 192)
    traced = torch.fx.symbolic_trace(layer)
    assert [node.op for node in traced.graph.nodes] == ["placeholder", "get_attr", "get_attr", "call_function",
                                                        "output"]
    x = torch.randn(64, 384)
    torch.testing.assert_close(traced(x), layer(x))


def test_vimtune_info_names_the_path_and_why(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from vimtune.cli import main

    monkeypatch.setenv(ENV_VAR, "torch")
    assert main(["info"]) == 0
    assert f"float32 CPU linears of at least {MIN_MACS:,} multiply-adds: torch's default (MKL on x86) " \
           f"({ENV_VAR}=torch)" in capsys.readouterr().out
    monkeypatch.setenv(ENV_VAR, "auto")
    monkeypatch.setattr(cpu_linear, "_onednn_linear", lambda: object())
    monkeypatch.setattr(cpu_linear, "_avx512_outside_intel", lambda: True)
    assert "oneDNN (auto: a CPU with AVX-512 not made by Intel)" in cpu_linear.describe_cpu_matmul()


@needs_onednn
def test_torch_compile_traces_linear(onednn: None) -> None:
    """While torch.compile traces, linear is F.linear (dynamo cannot trace oneDNN's operator)."""
    torch._dynamo.reset()
    layer = Linear(384, 192)
    x = torch.randn(64, 384, requires_grad=True)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    (got,) = torch.autograd.grad(compiled(x).pow(2).sum(), x)
    (ref,) = torch.autograd.grad(F.linear(x, layer.weight, layer.bias).pow(2).sum(), x)
    torch.testing.assert_close(got, ref)
