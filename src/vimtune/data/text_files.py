"""Reading the dataset's own text files (list files, ``classes.txt``, split JSON) with clear errors."""

from __future__ import annotations

import os

__all__ = ["read_text"]


def read_text(path: str | os.PathLike[str]) -> str:
    """The UTF-8 text of ``path``, without a leading byte-order mark.

    Raises:
        ValueError: the file is not UTF-8 (e.g. Latin-1); the message names the file, the line and
            the offending byte.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"'{os.fspath(path)}' line {line}: byte 0x{data[err.start]:02x} is not UTF-8 "
            "(the file looks Latin-1 or another legacy encoding); save it as UTF-8"
        ) from None
