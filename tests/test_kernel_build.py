"""What happens when a C++ kernel cannot be built: the library warns once and falls back; the test suite
skips the kernel tests, except in CI (``CI=true``), where they fail."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import pytest

from helpers.kernels import require_kernel
from vimtune.ops import mixer_cpu, scan_cpu
from vimtune.ops._build import remove_stale_build_lock


@pytest.mark.parametrize("module, fallback", [(scan_cpu, "falling back to the 'chunked' backend"),
                                              (mixer_cpu, "the mixer uses its generic path")])
def test_build_failure_warns_once_and_reports_unavailable(module, fallback: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # no lock of the real cache can add a warning

    def failing_load(**_: object) -> None:
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr("torch.utils.cpp_extension.load", failing_load)
    with pytest.warns(RuntimeWarning, match=fallback) as record:
        assert module._ops.__wrapped__() is None
    assert len(record) == 1 and "compiler exploded" in str(record[0].message)


def _unbuildable() -> bool:
    """An availability check whose build failed (it warns, as vimtune's do)."""
    warnings.warn("vimtune: the C++ thing could not be built (error: no compiler)", RuntimeWarning, stacklevel=1)
    return False


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_kernel_that_does_not_build_fails_in_ci(ci: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"C\+\+ thing could not be used: .*error: no compiler.*CI=true"):
        require_kernel(_unbuildable, "C++ thing")
    require_kernel(lambda: True, "C++ thing")  # a built kernel passes


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_a_kernel_that_does_not_build_skips_elsewhere(ci: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match=r"C\+\+ thing could not be used: .*error: no compiler"):
        require_kernel(_unbuildable, "C++ thing")


def test_a_build_lock_left_by_a_killed_build_is_removed_and_a_fresh_one_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale = tmp_path / "py311_cu130" / "ext_old" / "lock"
    fresh = tmp_path / "ext_new" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    with pytest.warns(RuntimeWarning, match="removing the build lock"):
        assert remove_stale_build_lock("ext_old") == stale
    assert not stale.exists()
    assert remove_stale_build_lock("ext_new") is None
    assert fresh.exists()
