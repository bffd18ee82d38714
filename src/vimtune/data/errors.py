"""Exceptions raised by the data layer."""

from __future__ import annotations

__all__ = ["AugmentationError", "BadImageError", "DatasetNotFoundError", "EmptySplitError"]


class BadImageError(OSError):
    """An image file that cannot be opened or decoded.

    The message always names the file (and its label, when known) so that a failing
    sample can be found in a large dataset, e.g.::

        cannot read image '/data/x.png' (label 3): cannot identify image file ...
    """

    def __init__(self, path: str, label: int | None = None, reason: str | None = None) -> None:
        """Build from ``(path, label, reason)``.

        Called with a single argument, that argument is taken as the complete message and
        :attr:`path` is ``None``: this is how ``DataLoader`` re-raises an error from a worker
        process (its message then holds the worker's traceback, which names the file).
        """
        self.label = label
        self.reason = reason
        if reason is None and label is None:
            self.path: str | None = None
            message = str(path)
        else:
            self.path = str(path)
            where = f"'{self.path}'" + (f" (label {label})" if label is not None else "")
            message = f"cannot read image {where}: {reason}"
        super().__init__(message)

    def __str__(self) -> str:  # OSError's default __str__ would add an errno prefix
        return self.args[0]

    def __reduce__(self):  # keep the exception picklable across DataLoader workers
        if self.path is None:
            return (type(self), (self.args[0],))
        return (type(self), (self.path, self.label, self.reason))


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root, split folder or split file that does not exist.

    The message names the path that was expected and, where relevant, the split asked for.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return self.args[0]


class AugmentationError(RuntimeError):
    """A training/evaluation transform failed on one image; the message names the image and the step."""


class EmptySplitError(ValueError):
    """A split whose list or split file names no images; the message names the file."""
