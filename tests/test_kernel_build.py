"""What happens when a C++ kernel cannot be built: the library warns once and falls back; the test suite
skips the kernel tests, except in CI (``CI=true``), where they fail. The kernels compile for the x86 ISA
that this machine does not have, and a build compiles exactly the text its cache entry is named after."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
import warnings
from pathlib import Path

import pytest
from torch.utils.cpp_extension import include_paths

from helpers.kernels import require_kernel
from vimtune.ops import mixer_cpu, scan_cpu
from vimtune.ops._build import (
    _CFLAGS,
    _source_files,
    _source_tag,
    load_cpu_extension,
    lock_holders,
    remove_stale_build_lock,
    staged_sources,
)


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


def _old_lock(path: Path) -> Path:
    """An empty lock file at ``path`` last modified an hour ago."""
    path.parent.mkdir(parents=True)
    path.touch()
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    return path


@pytest.fixture
def waiting_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch whose builds wait while the lock file exists (``FileBaton``), whatever torch is installed."""
    monkeypatch.setattr("vimtune.ops._build._lock_is_advisory", lambda: False)


@pytest.mark.usefixtures("waiting_torch")
def test_a_build_lock_left_by_a_killed_build_is_removed_and_a_fresh_one_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale = _old_lock(tmp_path / "py311_cu130" / "ext_old" / "lock")
    fresh = tmp_path / "ext_new" / "lock"
    fresh.parent.mkdir(parents=True)
    fresh.touch()
    with pytest.warns(RuntimeWarning, match="removing the build lock"):
        assert remove_stale_build_lock("ext_old") == stale
    assert not stale.exists()
    assert remove_stale_build_lock("ext_new") is None
    assert fresh.exists()


@pytest.mark.usefixtures("waiting_torch")
def test_the_lock_of_a_live_build_is_kept_however_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holding the lock file open (as a build in progress does) keeps it, an hour old or
    not; once that process is killed, the lock it left is removed."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = _old_lock(tmp_path / "ext" / "lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; f = open(sys.argv[1]); print('open', flush=True); time.sleep(120)",
         str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        assert holder.pid in lock_holders(lock)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert remove_stale_build_lock("ext") is None
        assert lock.exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with pytest.warns(RuntimeWarning, match="removing the build lock"):
        assert remove_stale_build_lock("ext") == lock


def test_an_advisory_build_lock_file_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a torch that holds an OS advisory lock (released when its holder dies) the file never blocks
    a build, so even an old one with no holder stays."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr("vimtune.ops._build._lock_is_advisory", lambda: True)
    lock = _old_lock(tmp_path / "ext" / "lock")
    assert remove_stale_build_lock("ext") is None
    assert lock.exists()


def test_a_source_edited_during_a_build_does_not_reach_the_build_named_for_its_old_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's ``load`` reads its sources after the extension's name (the hash of the text) is taken. It is
    given a copy of the hashed text, so an edit of the source in between (done here from inside ``load``)
    reaches neither this build nor the cache entry named for the old text."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    source, header = csrc / "kernel.cpp", csrc / "helpers.h"
    source.write_text('#include "helpers.h"\n// first text\n')
    header.write_text("// header, first text\n")
    first = _source_files(source)
    built: dict[str, object] = {}

    def load(name: str, sources: list[str], **kwargs: object) -> None:
        source.write_text('#include "helpers.h"\n// edited while building\n')
        header.write_text("// header, edited\n")
        staged = Path(sources[0])
        built.update(name=name, text=staged.read_bytes(), header=(staged.parent / "helpers.h").read_bytes())

    monkeypatch.setattr("torch.utils.cpp_extension.load", load)
    load_cpu_extension("vimtune_test_kernel", source, what="test kernel", fallback="none.")
    assert built["name"].endswith("_" + _source_tag(first))
    assert built["text"] == first["kernel.cpp"] and built["header"] == first["helpers.h"]
    assert _source_tag(_source_files(source)) != _source_tag(first)  # the edit did change the text


def test_staged_sources_hold_exactly_the_given_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One folder per extension under the extensions directory; a file found there with other text (e.g. a
    write cut short) is rewritten, and no temporary file is left behind."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    files = {"kernel.cpp": b"int f();\n", "helpers.h": b"// h\n"}
    folder = staged_sources(files, "ext_abc")
    assert folder == tmp_path / "vimtune_sources" / "ext_abc"
    (folder / "kernel.cpp").write_bytes(b"int f")
    assert staged_sources(files, "ext_abc") == folder
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == files


@pytest.mark.parametrize("source", ["mixer_cpu.cpp", "selective_scan_cpu.cpp", "rms_norm_cpu.cpp",
                                    "prompt_update_cpu.cpp"])
@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64-v4"], ids=["avx2", "avx512"])
def test_the_kernels_compile_for_the_other_x86_isa(source: str, march: str) -> None:
    """The kernels build with ``-march=native``, so a machine compiles only its own ISA's branches; this
    compiles each source for an AVX2-only and for an AVX-512 CPU (``-fsyntax-only``: parsed and every template
    instantiated), as the other machines' builds would (an AVX-512-only name once broke the AVX2 build)."""
    compiler = shutil.which("g++")
    if compiler is None or platform.machine() != "x86_64":
        pytest.skip("needs g++ on an x86-64 machine")
    flags = [f for f in _CFLAGS if not f.startswith("-march=")]
    includes = [f"-I{p}" for p in (*include_paths(), sysconfig.get_paths()["include"])]
    source_path = Path(scan_cpu.__file__).parent / "csrc" / source
    result = subprocess.run([compiler, "-std=c++20", "-fsyntax-only", f"-march={march}", "-Wno-psabi", *flags,
                             *includes, str(source_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
