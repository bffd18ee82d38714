"""Adapter artifacts: a method's trained tensors plus what is needed to rebuild the model.

A directory holding ``adapter.safetensors`` (the method's :meth:`~Method.trainable_state`) and
``adapter.json``::

    {"format": "vimtune-adapter", "format_version": 1, "vimtune_version": "...",
     "backbone": {"name": "vim_small_patch16_224", "kwargs": {...},
                  "weights": {"source": "vim_s.pth", "sha256": "..."}},
     "method": {"name": "svp", "options": {...}}, "num_classes": 10,
     "parameters": {"trainable": ..., "total": ..., "share": ...}}

``backbone.weights`` records the backbone weights the adapter was trained on (see
:mod:`vimtune.models.provenance`; ``"file"`` names a random backbone stored in the folder);
``null`` when they are unknown (older adapters, or a conversion without its backbone), and then
:func:`load_adapter` needs ``backbone_weights``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import timm
from safetensors.torch import save
from torch import Tensor, nn

from vimtune import __version__
from vimtune.methods.base import Method
from vimtune.methods.registry import from_config
from vimtune.models.checkpoint import (
    CheckpointError,
    adapt_state_dict,
    check_keys,
    load_safetensors,
    read_state_dict,
)
from vimtune.models.provenance import ProvenanceError, check_weights, local_weights_file
from vimtune.models.spec_check import check_model_spec

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter.json"
FORMAT = "vimtune-adapter"
FORMAT_VERSION = 1


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, Tensor],
                 allowed_missing: Iterable[str] = ()) -> None:
    """Load a checkpoint (path or state dict) into ``model``, strictly except for ``allowed_missing``.

    As :func:`vimtune.models.load_checkpoint`: ``pos_embed`` is resized to the model's grid and a
    head of another shape is dropped (left as initialised).
    """
    is_file = isinstance(source, (str, os.PathLike))
    state = read_state_dict(source) if is_file else dict(source)
    state, report = adapt_state_dict(state, model, os.fspath(source) if is_file else None)
    check_keys(state, model, allowed_missing=(*allowed_missing, *report.reset_keys))
    model.load_state_dict(state, strict=False)


def _backbone_spec(backbone: Mapping[str, Any]) -> dict[str, Any]:
    """``{"name": str, "kwargs": dict, "weights": record or None}`` checked to be JSON-able."""
    name, kwargs, weights = backbone.get("name"), backbone.get("kwargs", {}), backbone.get("weights")
    if not isinstance(name, str) or not isinstance(kwargs, Mapping):
        raise ValueError(f"backbone must be dict(name=<timm model name>, kwargs=<dict>), got {backbone!r}")
    if weights is not None and not (isinstance(weights, Mapping) and {"source", "sha256"} <= set(weights)):
        raise ValueError(f"backbone weights must be a provenance record {{source, sha256}} or None, got {weights!r}")
    spec = {"name": name, "kwargs": dict(kwargs), "weights": dict(weights) if weights is not None else None}
    try:
        json.dumps(spec)
    except TypeError as err:
        raise ValueError(f"backbone kwargs must be JSON-able: {err}") from err
    return spec


def save_adapter(model: nn.Module, method: Method, directory: str | os.PathLike,
                 backbone: Mapping[str, Any]) -> Path:
    """Write ``method``'s trained tensors of ``model`` and the rebuild recipe to ``directory``.

    Args:
        model: a backbone with ``method`` attached.
        method: the attached method.
        directory: created if missing; existing adapter files are overwritten.
        backbone: ``dict(name=..., kwargs=..., weights=...)`` such that ``timm.create_model(name, **kwargs)``
            builds the backbone (before the method was attached) and ``weights`` is the
            :func:`~vimtune.models.provenance.weights_record` of its weights (``None``: unknown).

    Returns:
        The directory.

    Each file is replaced whole or not at all (a full disk leaves the previous adapter intact).
    """
    from vimtune.engine.checkpoint import atomic_write, atomic_write_text  # engine imports this package

    spec = _backbone_spec(backbone)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in method.trainable_state(model).items()}
    blob = save(state, metadata={"format": FORMAT})
    atomic_write(directory / WEIGHTS_FILE, lambda f: f.write(blob))
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vimtune_version": __version__,
        "backbone": spec,
        "method": method.to_config(),
        "num_classes": model.num_classes,
        "parameters": method.describe(model),
    }
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return directory


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``adapter.json`` of ``directory``, checked to be a vimtune adapter that can be built.

    Raises:
        FileNotFoundError: no ``adapter.json``.
        CheckpointError: not JSON, not a vimtune adapter, or a backbone / class count / method that
            is not a known, buildable configuration (see :func:`~vimtune.models.spec_check.check_model_spec`);
            the message names the file and the key. Nothing is built before this check passes.
    """
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in '{directory}' (expected a directory written by save_adapter)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"'{path}' is not valid JSON ({err}); expected the {CONFIG_FILE} save_adapter "
                              "writes") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"'{path}' holds {type(config).__name__}, expected a JSON object")
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' is not a {FORMAT} v{FORMAT_VERSION} config (format={config.get('format')!r}, "
            f"format_version={config.get('format_version')!r})"
        )
    backbone, method = config.get("backbone"), config.get("method")
    try:
        if not isinstance(backbone, dict) or not isinstance(method, dict):
            raise ValueError("'backbone' and 'method' must be JSON objects")
        check_model_spec(backbone.get("name"), backbone.get("kwargs", {}), config.get("num_classes"),
                         where="backbone.")
        from_config(method)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"'{path}': {err}") from None
    return config


def adapter_backbone_file(directory: str | os.PathLike, record: Mapping[str, Any] | None,
                          backbone_weights: str | os.PathLike | None) -> Path:
    """The backbone file to load under the adapter in ``directory``, checked against its ``record``."""
    if record is None:
        if backbone_weights is None:
            raise ProvenanceError(
                f"adapter '{directory}' does not record its backbone weights: pass backbone_weights=PATH "
                "(--backbone-weights) with the weights it was trained on; without them the backbone is random"
            )
        return local_weights_file(backbone_weights)
    if backbone_weights is not None:
        path = local_weights_file(backbone_weights)
    elif "file" in record:
        path = Path(directory) / record["file"]
    else:
        path = local_weights_file(record["source"])
    check_weights(dict(record), path, f"adapter '{directory}'")
    return path


def load_adapter(directory: str | os.PathLike, backbone_weights: str | os.PathLike | None = None,
                 ) -> tuple[nn.Module, Method]:
    """Rebuild a model from :func:`save_adapter`'s ``directory``.

    Builds the backbone with ``timm.create_model(name, **kwargs)``, loads its weights (strict,
    except that the head may be absent or of another class count: the adapter holds the head),
    attaches the method and loads its trained tensors (strict). The backbone weights are those
    ``adapter.json`` records, checked by SHA-256: ``backbone_weights`` (any file
    :func:`vimtune.models.read_state_dict` reads) says where they are when the recorded source
    is not at hand, and is required when the adapter records none.

    Raises:
        vimtune.models.provenance.ProvenanceError: backbone weights missing, or not the recorded ones.

    Returns:
        The model (as ``timm.create_model`` leaves it: in train mode) and the method.
    """
    config = read_adapter_config(directory)
    weights_file = adapter_backbone_file(directory, config["backbone"].get("weights"), backbone_weights)
    method = from_config(config["method"])
    model = timm.create_model(config["backbone"]["name"], **config["backbone"].get("kwargs", {}))
    head = [name for name in model.state_dict() if name.startswith("head.")]
    load_weights(model, weights_file, allowed_missing=head)
    method.attach(model, num_classes=config["num_classes"])
    method.load_trainable_state(model, load_safetensors(Path(directory) / WEIGHTS_FILE))
    return model, method
