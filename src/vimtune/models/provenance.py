"""Where backbone weights came from: ``{"source": ..., "sha256": ...}`` records and their checks.

A record names the weights as the user gave them (``source``: a path, a hub id such as
``hf-hub:owner/repo/file``, or ``random (seed N)`` for a stored random initialisation) and pins
their content with the SHA-256 of the local file they were read from. Run folders
(``run.json``) and adapters (``adapter.json``) store one, and whoever rebuilds the model checks
the file it is about to load against it, so a moved, edited or missing backbone is an error, never
a silently different model.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from vimtune.models.checkpoint import CheckpointError
from vimtune.models.hub import HUB_PREFIX, resolve_weights

#: Name of a stored random backbone, in a run folder and in an adapter folder.
BACKBONE_FILE = "backbone.safetensors"


class ProvenanceError(CheckpointError):
    """Backbone weights missing, or not the ones a run or adapter was trained with."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def weights_record(source: str, local_file: str | os.PathLike) -> dict[str, str]:
    """The provenance record of weights named ``source`` and read from ``local_file``.

    Raises:
        FileNotFoundError: ``local_file`` does not exist (the message names ``source`` too).
    """
    path = Path(local_file)
    if not path.is_file():
        shown = f"'{path}'" if str(path) == source else f"'{path}' (from {source})"
        raise FileNotFoundError(f"backbone weights file not found: {shown}")
    return {"source": source, "sha256": file_sha256(path)}


def check_weights(record: dict[str, Any], local_file: str | os.PathLike, owner: str) -> None:
    """Check that ``local_file`` holds the weights ``record`` describes.

    Args:
        record: ``{"source", "sha256"}`` as written by :func:`weights_record`.
        local_file: the file about to be loaded.
        owner: what was trained on them, for the message (``run folder 'runs/x'``).

    Raises:
        ProvenanceError: the file is missing or its SHA-256 differs (both names in the message).
    """
    path = Path(local_file)
    trained_on = f"{owner} was trained on backbone weights '{record['source']}' (sha256 {record['sha256']})"
    if not path.is_file():
        raise ProvenanceError(f"{trained_on}, but '{path}' does not exist; pass the path of that file "
                              "(--backbone-weights PATH, or backbone_weights=PATH)")
    found = file_sha256(path)
    if found != record["sha256"]:
        raise ProvenanceError(f"{trained_on}, but '{path}' has sha256 {found}: these are other weights, "
                              "and the results would not be the run's")


def local_weights_file(source: str | os.PathLike) -> Path:
    """The local file that backbone weights named ``source`` are read from (a path is its own file).

    The one place a weights name becomes a file: ``hf-hub:`` ids resolve here to their cached file
    (see :func:`vimtune.models.hub.resolve_weights`).
    """
    text = os.fspath(source)
    return resolve_weights(text).path if text.startswith(HUB_PREFIX) else Path(text)
