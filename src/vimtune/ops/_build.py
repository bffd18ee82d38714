"""JIT build of the C++ CPU kernels in ``csrc/`` with :func:`torch.utils.cpp_extension.load`.

Each kernel is one ``.cpp`` file that registers its ops with ``TORCH_LIBRARY``; it is compiled into
torch's extensions directory (``TORCH_EXTENSIONS_DIR`` when set) on first use and loaded from that
cache afterwards. The build uses ``-march=native``, so the extension name carries a hash of this CPU's
model and feature flags; torch hashes only the listed source, not the headers it includes, so the name
also carries a hash of the source, of every header next to it (``csrc/*.h``) and of the compiler flags,
and editing any of them builds a fresh extension. The build compiles a copy of the files that were hashed
(kept per hash under ``vimtune_sources/`` of the extensions directory), not the files in ``csrc/``: torch's
ninja reads its sources later than the hash is taken, and a source edited in between was once compiled into
the build folder named for the text before the edit, where later processes of that text loaded it.

torch serialises builds of one extension with a ``lock`` file in its build folder, in one of two ways.
Recent torch (``torch.utils.cpp_extension`` without ``FileBaton``) holds an OS advisory lock on the file,
which the kernel releases when its holder dies: the file stays after every build and never blocks, so
nothing is done about it. Older torch (``FileBaton``) creates the file, keeps it open while it builds,
removes it when done, and waits, without a time limit, while it exists: a build killed midway (Ctrl-C, a
time-out, ``kill -9``) leaves it behind and every later process would wait forever. There a lock is
removed, with a warning, before loading when it is older than :data:`STALE_LOCK_SECONDS` (far longer than
a build takes) and no process has it open (a live build keeps its lock file open; the kernel closes a
killed one's). Where open files cannot be listed (no ``/proc``), no lock is removed.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
import warnings
from pathlib import Path

import torch

#: Age after which a build lock counts as left behind by a killed build (a build takes minutes at most).
STALE_LOCK_SECONDS = 20 * 60

# 512-bit vectors where the CPU has them: the kernels' lane blocks are 16 float32 values, and gcc otherwise
# splits some lane loops into 256-bit halves (on the measuring machine, at one thread, the scan and conv
# forward were 5-10% slower without this flag; at two threads the difference was within the noise).
# -fno-trapping-math lets gcc turn the selects of fast_math.h (clamps, softplus branches) into blends on
# CPUs without AVX-512 masks: without it gcc 12 on an AVX2-only CPU left every lane loop that calls exp
# scalar ("control flow in loop"). It changes no value; it only stops gcc caring about FP exception flags.
_CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=fast", "-fno-trapping-math",
           "-fopenmp"]
_LDFLAGS = ["-fopenmp"]


def _cpu_tag() -> str:
    """Short hash of the CPU model and feature flags (the build uses ``-march=native``)."""
    info = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text(errors="replace").splitlines()
        keys = ("model name", "flags", "Features", "CPU part")
        info += "".join(sorted({line for line in lines if line.split(":")[0].strip() in keys}))
    return hashlib.sha1(info.encode()).hexdigest()[:10]


def _source_files(source: Path) -> dict[str, bytes]:
    """The text of ``source`` and of the headers in its directory (which torch's own hash ignores), by file
    name, read once: the bytes that are hashed are the bytes that are built."""
    return {path.name: path.read_bytes() for path in [source, *sorted(source.parent.glob("*.h"))]}


def _source_tag(files: dict[str, bytes]) -> str:
    """Short hash of the source files (:func:`_source_files`) and of the compiler flags (so that builds with
    other flags, e.g. from an older checkout, get their own cache entry)."""
    digest = hashlib.sha1(" ".join(_CFLAGS).encode())
    for name, text in files.items():
        digest.update(name.encode() + b"\0" + text + b"\0")
    return digest.hexdigest()[:10]


def _extensions_root() -> Path:
    """torch's extensions directory: ``TORCH_EXTENSIONS_DIR`` when set, else torch's default build root."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def staged_sources(files: dict[str, bytes], extension: str) -> Path:
    """The folder ``vimtune_sources/<extension>`` of the extensions directory holding exactly ``files``
    (name -> text), each written once (to a temporary name, then renamed, so that a process building at the
    same time never reads half a file); a file found there with other text is rewritten."""
    folder = _extensions_root() / "vimtune_sources" / extension
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        target = folder / name
        if target.exists() and target.read_bytes() == text:
            continue
        partial = folder / f".{name}.{os.getpid()}.partial"
        partial.write_bytes(text)
        os.replace(partial, target)
    return folder


def _lock_is_advisory() -> bool:
    """True when torch holds an OS advisory lock on its build lock file (the file itself never blocks)."""
    from torch.utils import cpp_extension

    return not hasattr(cpp_extension, "FileBaton")


def lock_holders(lock: Path) -> list[int] | None:
    """Ids of the processes that have ``lock`` open (from ``/proc/<pid>/fd``), or None where that cannot be
    read (no ``/proc``). Processes this user may not inspect are not seen."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    target = os.path.realpath(lock)
    holders = []
    for fd_dir in proc.glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == target for fd in fd_dir.iterdir()):
                holders.append(int(fd_dir.parent.name))
        except OSError:  # the process ended meanwhile, or is not ours to inspect
            continue
    return holders


def remove_stale_build_lock(extension: str, max_age_s: float = STALE_LOCK_SECONDS) -> Path | None:
    """Remove ``extension``'s build lock when torch waits for the file to go away (``FileBaton``), it is
    older than ``max_age_s`` and no process has it open; the removed path, else None."""
    from torch.utils.cpp_extension import get_default_build_root

    if _lock_is_advisory():
        return None
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    for lock in [root / extension / "lock", *root.glob(f"*/{extension}/lock")]:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            continue
        if age > max_age_s and lock_holders(lock) == []:
            warnings.warn(f"vimtune: removing the build lock '{lock}', left {age / 60:.0f} min ago by a build "
                          "that did not finish (torch would wait for it forever)", RuntimeWarning, stacklevel=2)
            lock.unlink(missing_ok=True)
            return lock
    return None


def _failure_reason(exc: Exception) -> str:
    """The compiler's first ``error:`` line, else the first line of the message (at most 300 characters)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in lines if "error:" in line), lines[0] if lines else type(exc).__name__)
    return reason[:300]


def load_cpu_extension(name: str, source: Path, *, what: str, fallback: str) -> object | None:
    """Build (or load from the cache) the kernel in ``source``; its ``torch.ops`` namespace, or None.

    Never raises: on any build or load failure it warns (``RuntimeWarning``) and returns None, so the
    caller can use another code path. Call it once per kernel (the callers cache the result), so that
    the warning is given once.

    Args:
        name: the ``TORCH_LIBRARY`` namespace that ``source`` registers, e.g. ``"vimtune_scan_cpu"``; the
            extension is built as ``{name}_{cpu hash}_{source hash}``.
        source: the ``.cpp`` file.
        what: the kernel, as the warning names it, e.g. ``"C++ CPU selective scan"``.
        fallback: the warning's last sentence, saying what is used instead.

    Returns:
        ``torch.ops.<name>``, or None when the extension could not be built or loaded.
    """
    try:
        from torch.utils.cpp_extension import load

        files = _source_files(source)
        extension = f"{name}_{_cpu_tag()}_{_source_tag(files)}"
        remove_stale_build_lock(extension)
        load(
            name=extension,
            sources=[str(staged_sources(files, extension) / source.name)],
            extra_cflags=_CFLAGS,
            extra_ldflags=_LDFLAGS,
            is_python_module=False,
        )
        return getattr(torch.ops, name)
    except Exception as exc:  # any build or load failure means: use another code path
        warnings.warn(
            f"vimtune: the {what} could not be built or loaded ({_failure_reason(exc)}); {fallback}",
            RuntimeWarning,
            stacklevel=4,  # the caller of the module's public availability check (through its cached _ops)
        )
        return None
