"""Adapter artifacts: a method's trained tensors plus what is needed to rebuild the model.

A directory holding ``adapter.safetensors`` (the method's :meth:`~Method.trainable_state`) and
``adapter.json``::

    {"format": "vimtune-adapter", "format_version": 1, "vimtune_version": "...",
     "backbone": {"name": "vim_small_patch16_224", "kwargs": {...}},
     "method": {"name": "svp", "options": {...}}, "num_classes": 10,
     "parameters": {"trainable": ..., "total": ..., "share": ...}}
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import timm
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vimtune import __version__
from vimtune.methods.base import Method
from vimtune.methods.registry import from_config
from vimtune.models.checkpoint import CheckpointError, adapt_state_dict, check_keys, read_state_dict

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
    """``{"name": str, "kwargs": dict}`` checked to be JSON-able."""
    name, kwargs = backbone.get("name"), backbone.get("kwargs", {})
    if not isinstance(name, str) or not isinstance(kwargs, Mapping):
        raise ValueError(f"backbone must be dict(name=<timm model name>, kwargs=<dict>), got {backbone!r}")
    spec = {"name": name, "kwargs": dict(kwargs)}
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
        backbone: ``dict(name=..., kwargs=...)`` such that ``timm.create_model(name, **kwargs)``
            builds the backbone (before the method was attached).

    Returns:
        The directory.
    """
    spec = _backbone_spec(backbone)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in method.trainable_state(model).items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vimtune_version": __version__,
        "backbone": spec,
        "method": method.to_config(),
        "num_classes": model.num_classes,
        "parameters": method.describe(model),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``adapter.json`` of ``directory``, checked to be a vimtune adapter."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in '{directory}' (expected a directory written by save_adapter)")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' is not a {FORMAT} v{FORMAT_VERSION} config (format={config.get('format')!r}, "
            f"format_version={config.get('format_version')!r})"
        )
    return config


def load_adapter(directory: str | os.PathLike, backbone_weights: str | os.PathLike | None = None,
                 ) -> tuple[nn.Module, Method]:
    """Rebuild a model from :func:`save_adapter`'s ``directory``.

    Builds the backbone with ``timm.create_model(name, **kwargs)``, loads ``backbone_weights``
    if given (any file :func:`vimtune.models.read_state_dict` reads; strict, except that the head
    may be absent or of another class count: the adapter holds the head), attaches the method
    and loads its trained tensors (strict).

    Returns:
        The model (as ``timm.create_model`` leaves it: in train mode) and the method.
    """
    config = read_adapter_config(directory)
    method = from_config(config["method"])
    model = timm.create_model(config["backbone"]["name"], **config["backbone"]["kwargs"])
    if backbone_weights is not None:
        head = [name for name in model.state_dict() if name.startswith("head.")]
        load_weights(model, backbone_weights, allowed_missing=head)
    method.attach(model, num_classes=config["num_classes"])
    method.load_trainable_state(model, load_file(str(Path(directory) / WEIGHTS_FILE)))
    return model, method
