"""Which selective-scan backend runs: the argument, else VIMTUNE_SCAN_BACKEND, else the best available;
``chunked`` when the C++ kernel is unavailable. Spies record the backend called, so a wrong choice fails
even where the backends agree numerically."""

from __future__ import annotations

import importlib

import pytest
import torch

import vimtune.models.mamba as mamba
from helpers.scan_cases import make_scan_inputs
from vimtune.ops import available_backends, resolve_backend, scan_cpu, selective_scan
from vimtune.ops.scan_chunked import selective_scan_chunked

# the module: the package attribute vimtune.ops.selective_scan is the function
dispatch = importlib.import_module("vimtune.ops.selective_scan")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every backend replaced by a spy that records its name (the C++ one reported available)."""
    called: list[str] = []

    def spy(name: str):
        return lambda *args, **kwargs: called.append(name) or name

    for name in ("reference", "chunked", "cuda"):
        monkeypatch.setattr(dispatch, f"selective_scan_{name}", spy(name))
    monkeypatch.setattr(dispatch, "_cpu_backend", lambda: spy("cpu"))
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    return called


def _scan(**kwargs: object) -> object:
    return selective_scan(**make_scan_inputs(1, 2, 5, 3, seed=6), delta_softplus=True, **kwargs)


def test_argument_beats_environment_beats_automatic(calls: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert _scan() == "cpu"  # automatic on a CPU tensor with the kernel available
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    assert _scan() == "reference"
    assert _scan(backend="chunked") == "chunked"
    monkeypatch.setenv(dispatch.ENV_VAR, "auto")
    assert _scan() == "cpu"
    assert calls == ["cpu", "reference", "chunked", "cpu"]


def test_unknown_and_unavailable_backends_are_refused(calls: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown selective-scan backend 'nope'"):
        resolve_backend("cpu", "nope")
    with pytest.raises(RuntimeError, match="'cuda' is not available on cpu"):
        resolve_backend("cpu", "cuda")
    monkeypatch.setenv(dispatch.ENV_VAR, "nope")
    with pytest.raises(ValueError, match="unknown selective-scan backend 'nope'"):
        _scan()
    assert calls == []


def test_without_the_kernel_automatic_falls_back_to_chunked(calls: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_cpu_backend", lambda: None)
    assert available_backends("cpu") == ["reference", "chunked"]
    assert resolve_backend("cpu") == "chunked"
    assert _scan() == "chunked" and calls == ["chunked"]
    with pytest.raises(RuntimeError, match="'cpu' is not available on cpu; available: \\['reference', 'chunked'\\]"):
        _scan(backend="cpu")


def test_a_kernel_that_does_not_build_leaves_the_mixer_on_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """scan_cpu reporting no kernel (its build failed): the mixer takes its generic path, scanning each
    direction with the chunked backend, and gives the chunked path's result."""
    monkeypatch.setattr(scan_cpu, "cpu_kernel_available", lambda: False)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    monkeypatch.setattr(mamba, "bimamba_forward_tm", lambda *a: pytest.fail("the C++ mixer path ran"))
    called = []
    monkeypatch.setattr(dispatch, "selective_scan_chunked",
                        lambda *a, **kw: called.append("chunked") or selective_scan_chunked(*a, **kw))
    torch.manual_seed(0)
    mixer = mamba.BiMambaMixer(8)
    hidden = torch.randn(2, 5, 8)
    out = mixer(hidden)
    assert called == ["chunked", "chunked"]
    mixer.scan_backend = "chunked"
    assert torch.equal(out, mixer(hidden))


@pytest.mark.usefixtures("scan_kernel")
def test_cpu_backend_runs_the_cpu_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert resolve_backend("cpu") == "cpu"
    inputs = make_scan_inputs(1, 16, 20, 4, torch.float32, seed=5)
    expected = scan_cpu.selective_scan_cpu(**inputs, delta_softplus=True)
    called = []
    real = scan_cpu.selective_scan_cpu
    monkeypatch.setattr(scan_cpu, "selective_scan_cpu", lambda *a, **kw: called.append(1) or real(*a, **kw))
    assert torch.equal(selective_scan(**inputs, delta_softplus=True, backend="cpu"), expected)
    assert torch.equal(selective_scan(**inputs, delta_softplus=True), expected)
    assert len(called) == 2
