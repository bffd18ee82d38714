"""A pickle reader that only rebuilds plain containers and numpy arrays.

Used for the CIFAR python batches, which are pickles. A normal ``pickle.load`` can run arbitrary
code named by the file; :class:`RestrictedUnpickler` refuses every global except a short list of
builtin container/scalar types and the few numpy functions that rebuild an ``ndarray``.
"""

from __future__ import annotations

import builtins
import importlib
import io
import os
import pickle
from typing import Any

import numpy as np

__all__ = ["RestrictedUnpickler", "UnsafePickleError", "safe_load_pickle"]

_BUILTINS = frozenset({"dict", "list", "tuple", "bytes", "bytearray", "str", "int", "float", "bool"})


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global that is not on the allow-list."""


def _numpy_core(submodule: str) -> Any:
    """``numpy._core.<submodule>`` (numpy >= 2) or ``numpy.core.<submodule>`` (numpy 1.x)."""
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # pragma: no cover - numpy 1.x
        return importlib.import_module(f"numpy.core.{submodule}")


def _allowed_numpy_globals() -> dict[tuple[str, str], Any]:
    multiarray = _numpy_core("multiarray")
    numeric = _numpy_core("numeric")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler limited to builtin containers/scalars and numpy array reconstruction.

    Allowed globals: ``dict, list, tuple, bytes, bytearray, str, int, float, bool`` from
    ``builtins`` (or Python 2's ``__builtin__``), ``_codecs.encode`` (how Python 3 writes
    ``bytes`` at protocol 2), and numpy's ``ndarray``, ``dtype``, ``_reconstruct``, ``scalar`` and
    ``_frombuffer``. Anything else raises :class:`UnsafePickleError`.
    """

    _numpy_globals: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(builtins, name)
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        if RestrictedUnpickler._numpy_globals is None:
            RestrictedUnpickler._numpy_globals = _allowed_numpy_globals()
        obj = RestrictedUnpickler._numpy_globals.get((module, name))
        if obj is None:
            raise UnsafePickleError(f"refusing to load global '{module}.{name}' from a data pickle")
        return obj


def safe_load_pickle(path: str | os.PathLike[str], encoding: str = "bytes") -> Any:
    """Load a pickle file with :class:`RestrictedUnpickler`.

    ``encoding='bytes'`` keeps Python 2 ``str`` objects (the CIFAR batches were written by
    Python 2) as ``bytes``, which is why CIFAR dict keys come back as ``b'data'``, ``b'labels'``.

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list (the file is named).
        ValueError: the file is not a complete pickle (truncated, or another format).
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"'{os.fspath(path)}': {err} (only arrays and plain containers are allowed)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as err:
        raise ValueError(
            f"'{os.fspath(path)}' is not a readable pickle (truncated or another format): "
            f"{type(err).__name__}: {err}"
        ) from None
