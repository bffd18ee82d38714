"""Checking a model description (name, constructor arguments, classes) before anything is built.

Run configs and ``adapter.json`` files name a Vim config and constructor overrides; an override
such as ``depth: 1000000`` would otherwise allocate until the OOM killer stops the process. Each
integer size must lie within :data:`LIMIT_FACTOR` times the largest value any named configuration
uses, and the whole model (built on the ``meta`` device, which allocates nothing) must have at
most :data:`MAX_PARAMETERS` parameters (about ten times ``vim_base_patch16_224``'s 98 million).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from functools import cache
from typing import Any

import timm
import torch

from vimtune.models.vim import VisionMamba
from vimtune.models.zoo import MODEL_CONFIGS, create_vim

__all__ = ["LIMIT_FACTOR", "MAX_PARAMETERS", "check_model_spec"]

#: How far beyond the largest named configuration a size may go.
LIMIT_FACTOR = 8
#: The most parameters a described model may have (4 GB of float32 weights).
MAX_PARAMETERS = 1_000_000_000
_SIZE_KEYS = ("img_size", "patch_size", "stride", "in_chans", "embed_dim", "depth", "d_state", "expand", "d_conv")
_RATE_KEYS = ("drop_rate", "drop_path_rate")


@cache
def _signature_defaults() -> dict[str, Any]:
    return {n: p.default for n, p in inspect.signature(VisionMamba.__init__).parameters.items() if n != "self"}


@cache
def _largest_known() -> dict[str, tuple[int, str]]:
    """Per size key, the largest value of any named configuration and that configuration's name."""
    largest: dict[str, tuple[int, str]] = {}
    for name, (kwargs, _, _) in MODEL_CONFIGS.items():
        config = {**_signature_defaults(), **kwargs}
        config["stride"] = config["stride"] or config["patch_size"]
        for key in _SIZE_KEYS:
            if config[key] > largest.get(key, (0, ""))[0]:
                largest[key] = (config[key], name)
    return largest


def _check_size(key: str, value: Any, where: str) -> None:
    values = value if key == "img_size" and isinstance(value, (list, tuple)) and len(value) == 2 else [value]
    top, known = _largest_known()[key]
    limit = LIMIT_FACTOR * top
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= limit:
            raise ValueError(
                f"{where}kwargs.{key}={value!r}: expected an integer in 1..{limit} ({LIMIT_FACTOR}x the largest "
                f"known Vim configuration, {key}={top} of {known})"
            )


def check_model_spec(name: Any, kwargs: Any, num_classes: Any = None, where: str = "model.") -> None:
    """Refuse a model description that cannot or should not be built, before building it.

    Args:
        name: model name (a Vim config of :data:`~vimtune.models.MODEL_CONFIGS`, or another timm
            model, whose arguments are then left to timm).
        kwargs: constructor overrides.
        num_classes: the head's class count, when the description fixes it (adapters).
        where: prefix of the name and argument keys in messages (``"model."``, ``"backbone."``).

    Raises:
        ValueError: unknown name or argument, a size outside the known range, a model too large, a
            class count that is not a positive integer; the message names the key and the range.
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"num_classes={num_classes!r}: expected a positive integer")
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{where}kwargs: expected a mapping of constructor arguments, got {kwargs!r}")
    if not isinstance(name, str) or (name not in MODEL_CONFIGS and not timm.is_model(name)):
        raise ValueError(f"{where}name={name!r}: unknown model; known Vim configurations: {', '.join(MODEL_CONFIGS)}")
    if name not in MODEL_CONFIGS:
        return
    allowed = set(_signature_defaults()) - {"num_classes"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"{where}kwargs: unknown argument(s) {', '.join(unknown)}; "
                         f"{name} takes {', '.join(sorted(allowed))} (the class count comes from the data)")
    for key in _SIZE_KEYS:
        if key in kwargs and not (key == "stride" and kwargs[key] is None):
            _check_size(key, kwargs[key], where)
    for key in _RATE_KEYS:
        value = kwargs.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{where}kwargs.{key}={value!r}: expected a number in [0, 1)")
    try:
        with torch.device("meta"):
            model = create_vim(name, num_classes=num_classes or 1, **kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}kwargs {dict(kwargs)}: cannot build {name}: {err}") from None
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise ValueError(f"{where}kwargs {dict(kwargs)}: {name} would have {count:,} parameters, more than "
                         f"the {MAX_PARAMETERS:,} allowed (vim_base_patch16_224 has 98 million)")
