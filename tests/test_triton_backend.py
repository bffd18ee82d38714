"""The ``triton`` backend: the automatic backend choice on CUDA (in this process, with the probes replaced),
and the kernel checks of ``tests/triton_checks.py`` run in a fresh process under Triton's CPU interpreter."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from vimtune.ops import resolve_backend
from vimtune.ops.scan_cuda import cuda_kernel_available

dispatch = importlib.import_module("vimtune.ops.selective_scan")  # the module (the package exports its function)


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, mamba_ssm_runs: bool, triton_runs: bool) -> None:
    monkeypatch.setattr(dispatch, "cuda_kernel_available", lambda device: mamba_ssm_runs)
    monkeypatch.setattr(dispatch, "triton_available", lambda device: triton_runs)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    dispatch._warn_slow_fallback.cache_clear()


@pytest.mark.parametrize("mamba_ssm_runs, triton_runs, expected",
                         [(True, True, "cuda"), (False, True, "triton"), (True, False, "cuda")])
def test_automatic_choice_on_cuda_prefers_working_kernels(monkeypatch, mamba_ssm_runs, triton_runs, expected) -> None:
    _fake_cuda(monkeypatch, mamba_ssm_runs, triton_runs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning when a fused kernel runs
        assert resolve_backend("cuda") == expected


def test_automatic_choice_on_cuda_falls_back_to_chunked_with_one_warning(monkeypatch) -> None:
    _fake_cuda(monkeypatch, mamba_ssm_runs=False, triton_runs=False)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch 'chunked' backend, which is slow") as caught:
        assert resolve_backend("cuda") == "chunked"
        assert resolve_backend("cuda:0") == "chunked"
        assert resolve_backend("cuda") == "chunked"
    assert len(caught) == 2  # once per device


def test_explicit_triton_without_it_names_what_is_available(monkeypatch) -> None:
    _fake_cuda(monkeypatch, mamba_ssm_runs=False, triton_runs=False)
    with pytest.raises(RuntimeError, match="'triton' is not available on cuda"):
        resolve_backend("cuda", "triton")


def test_mamba_ssm_is_never_probed_for_cpu_tensors() -> None:
    assert cuda_kernel_available("cpu") is False


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_under_the_interpreter() -> None:
    """Runs every check of tests/triton_checks.py (scan, conv, mixer, whole Vim vs float64 references and the
    CPU backend) on CPU tensors with TRITON_INTERPRET=1, in a fresh process (the variable must be set before
    the kernels are imported)."""
    tests = Path(__file__).parent
    env = os.environ | {"TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests / "triton_checks.py")],
        capture_output=True, text=True, env=env, cwd=tests.parent, timeout=1800, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
