"""Crash-safe files: atomic writes, the resume checkpoint, weight files and RNG states.

Every file is written to a temporary file in the same folder, flushed and ``fsync``-ed, then
moved over the old one with :func:`os.replace`, so a process killed at any moment leaves either
the old or the new file, never a partial one.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from vimtune.models.checkpoint import load_safetensors

CHECKPOINT_FORMAT = "vimtune-train-checkpoint/1"
_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputWriteError(OSError):
    """A file could not be written (disk full, read-only folder...); the previous file is unchanged."""

    def __str__(self) -> str:  # OSError's default __str__ would add an errno prefix
        return self.args[0]


def _write_failed(path: Path, err: BaseException) -> OutputWriteError:
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
    return OutputWriteError(
        f"cannot write '{path}': {reason}; the previous '{path.name}', if any, is unchanged "
        "(free disk space or make the folder writable, then run again)"
    )


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` so that it is replaced whole or not at all.

    Raises:
        OutputWriteError: the folder is not writable or the disk is full (torch reports the latter
            from its zip writer as a RuntimeError); the old file is left as it was.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _write_failed(path, err) from err
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as a plain open() would, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) or (isinstance(err, RuntimeError) and "inline_container" in str(err)):
            raise _write_failed(path, err) from err
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a resume ``state`` (tensors, numbers, strings, lists, dicts)."""
    atomic_write(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **state}, f))


def load_checkpoint_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a resume checkpoint written by :func:`save_checkpoint` (``weights_only`` loading)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise RuntimeError(f"cannot read resume checkpoint '{path}': {err}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(f"'{path}' is not a vimtune training checkpoint ({CHECKPOINT_FORMAT})")
    return state


def save_weights(path: str | os.PathLike, state: Mapping[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Atomically write a state dict as safetensors; ``metadata`` values are stored as strings."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    blob = save(tensors, metadata={k: str(v) for k, v in metadata.items()})
    atomic_write(path, lambda f: f.write(blob))


def read_weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file written by :func:`save_weights`."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states as plain Python values (bytes, ints, lists).

    Plain values pickle through ``all_gather_object`` and load with ``weights_only=True``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": tensor_to_bytes(torch.get_rng_state()),
        "cuda": [tensor_to_bytes(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`."""
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(bytes_to_tensor(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([bytes_to_tensor(s) for s in state["cuda"]])


def tensor_to_bytes(state: torch.Tensor) -> bytes:
    """A generator state (uint8 tensor) as bytes."""
    return state.cpu().numpy().tobytes()


def bytes_to_tensor(state: bytes) -> torch.Tensor:
    """Undo :func:`tensor_to_bytes`."""
    return torch.frombuffer(bytearray(state), dtype=torch.uint8)


def _tuples(value: Any) -> Any:
    """Lists back to the tuples ``random.setstate`` wants (serialisation may turn them into lists)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def load_weights(model: Any, trainable: Any, path: str | os.PathLike) -> None:
    """Load a trainable-state safetensors file (see :func:`save_weights`) into ``model``.

    Raises:
        FileNotFoundError: no such file.
        vimtune.models.CheckpointError: a truncated file, NaN/inf values, or weights that do not fit
            the model (keys listed).
    """
    trainable.load_trainable_state(model, load_safetensors(path))
