"""What the ``vimtune`` command reports for an error: one clean line, never a traceback."""

from __future__ import annotations

import pickle
import re

#: Errors that describe bad input or a failing environment (missing or corrupt files, bad values,
#: a full disk, a read-only folder, refused pickles); the CLI prints their message and exits 1.
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, pickle.UnpicklingError)

_WORKER_LINE = re.compile(r"^[\w.]+: (.*)$")


def one_line(err: BaseException) -> str:
    """``err``'s message on one line: its lines joined by spaces; for an error a DataLoader worker re-raised with
    its traceback, the original line."""
    message = str(err)
    if "in DataLoader worker process" in message and "Traceback" in message:
        lines = [m.group(1) for line in message.splitlines() if (m := _WORKER_LINE.match(line))]
        if lines:
            return lines[-1]
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
