"""``run.json``: the backbone a run was trained from, and the file a rebuild of the run must load.

Written once when a run starts::

    {"format": "vimtune-run", "format_version": 1, "vimtune_version": "...",
     "backbone": {"source": "vim_s.pth", "sha256": "..."}}

``backbone`` is ``null`` for a model trained from scratch (its weight files hold every weight).
A fine-tune from a random initialisation (``model.random_backbone``) stores that frozen backbone
as ``backbone.safetensors`` in the run folder and records ``"file": "backbone.safetensors"``.
Resuming, ``vimtune eval`` and ``vimtune predict`` load the recorded file only after checking its
SHA-256, so they use exactly the weights the run was trained on or stop with an error naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vimtune import __version__
from vimtune.engine.checkpoint import atomic_write_text
from vimtune.engine.config import ModelConfig
from vimtune.engine.run_dir import RunFiles
from vimtune.models.provenance import ProvenanceError, check_weights, local_weights_file, weights_record

RUN_FORMAT = "vimtune-run"
RUN_FORMAT_VERSION = 1


def random_source(seed: int) -> str:
    """The ``source`` of a stored random initialisation."""
    return f"random (seed {seed})"


def new_backbone_file(model: ModelConfig) -> Path | None:
    """The backbone weights file a new run loads (``None``: a random initialisation).

    Raises:
        ValueError: a fine-tune without backbone weights and without ``model.random_backbone``, or both.
    """
    if model.backbone_weights and model.random_backbone:
        raise ValueError("model.backbone_weights and model.random_backbone (--random-backbone) exclude each other")
    if model.backbone_weights:
        return local_weights_file(model.backbone_weights)
    if model.method is not None and not model.random_backbone:
        raise ValueError(
            "fine-tuning needs pretrained backbone weights: pass --backbone-weights PATH (model.backbone_weights). "
            "To fine-tune a randomly initialised backbone on purpose, pass --random-backbone "
            "(model.random_backbone=true): that backbone is then stored in the run folder"
        )
    return None


def run_backbone_file(model: ModelConfig, files: RunFiles, resume: bool) -> Path | None:
    """The backbone file a run loads when it starts: the recorded one, checked, when a fine-tune resumes."""
    if resume and model.method is not None and files.record.is_file():
        return recorded_backbone_file(model, files)
    return new_backbone_file(model)


def backbone_record(model: ModelConfig, files: RunFiles, seed: int) -> dict[str, str] | None:
    """The ``backbone`` entry of a new run's ``run.json`` (a random backbone must be in ``files.backbone``)."""
    if model.backbone_weights:
        return weights_record(model.backbone_weights, local_weights_file(model.backbone_weights))
    if model.random_backbone:
        return {**weights_record(random_source(seed), files.backbone), "file": files.backbone.name}
    return None


def write_run_record(files: RunFiles, backbone: dict[str, str] | None) -> None:
    """Write ``run.json``."""
    record = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "vimtune_version": __version__,
              "backbone": backbone}
    atomic_write_text(files.record, json.dumps(record, indent=2) + "\n")


def read_run_record(files: RunFiles) -> dict[str, Any] | None:
    """The parsed ``run.json``; ``None`` for a run written before vimtune kept one."""
    if not files.record.is_file():
        return None
    try:
        record = json.loads(files.record.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProvenanceError(f"cannot read '{files.record}': {err}") from err
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT or "backbone" not in record:
        raise ProvenanceError(f"'{files.record}' is not a {RUN_FORMAT} record")
    return record


def recorded_backbone_file(model: ModelConfig, files: RunFiles) -> Path | None:
    """The backbone file that rebuilding the run (resume, eval, predict) must load, checked.

    ``model.backbone_weights`` (e.g. ``--backbone-weights`` given to ``vimtune eval``) may name
    another path to the same weights. Runs trained from scratch need none: their weight files
    hold the whole model.

    Raises:
        ProvenanceError: the recorded file is missing or holds other weights; or a fine-tune
            older than ``run.json`` without backbone weights (a random backbone that was not kept).
    """
    if model.method is None:
        return None
    record = read_run_record(files)
    if record is None:
        if not model.backbone_weights:
            raise ProvenanceError(
                f"run folder '{files.root}' was fine-tuned on a random backbone that was not saved (it has no "
                "run.json and no model.backbone_weights): its results cannot be reproduced"
            )
        return local_weights_file(model.backbone_weights)
    backbone = record["backbone"]
    if backbone is None:
        raise ProvenanceError(f"'{files.record}' records no backbone for a fine-tuned run")
    if "file" in backbone:
        path = files.root / backbone["file"]
    else:
        path = local_weights_file(model.backbone_weights or backbone["source"])
    check_weights(backbone, path, f"run folder '{files.root}'")
    return path
