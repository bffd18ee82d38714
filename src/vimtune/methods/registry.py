"""The named methods, and building a method (or a ``+`` composition) from its name and options."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from vimtune.methods.adapter import Adapter
from vimtune.methods.base import Method
from vimtune.methods.bias import BiasTuning
from vimtune.methods.compose import Composite, check_composable, route_options
from vimtune.methods.full import FullFineTune
from vimtune.methods.linear import LinearProbe
from vimtune.methods.lora import LoRA
from vimtune.methods.svp import SVP
from vimtune.methods.vpt import VPTDeep, VPTShallow

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (LinearProbe, BiasTuning, FullFineTune, VPTShallow, VPTDeep, LoRA, Adapter, SVP)
}


def available_methods() -> list[str]:
    """Names accepted by :func:`build` (besides ``+`` compositions of them)."""
    return list(METHODS)


def _method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; available: {available_methods()} (or a composition such as 'svp+lora')"
        ) from None


def build(name: str, **options: Any) -> Method:
    """The method ``name`` with ``options`` (see each method's options dataclass).

    ``name`` may join several methods with ``+`` (``"svp+lora"``); their options are then
    prefixed with the part's name (``svp_rank=32, lora_rank=4``; ``vpt-deep`` -> ``vpt_deep_``).

    Raises:
        ValueError: unknown method, bad option value, or parts that do not combine.
        TypeError: unknown option or option of the wrong type (valid options are listed).
    """
    names = name.split("+")
    classes = [_method_class(part) for part in names]
    if len(classes) == 1:
        return classes[0].from_options(**options)
    check_composable(classes)
    valid = {cls.name: [f.name for f in dataclasses.fields(cls.options_type)] for cls in classes}
    routed = route_options(names, valid, options)
    return Composite([cls.from_options(**routed[cls.name]) for cls in classes])


def from_config(config: Mapping[str, Any]) -> Method:
    """The method described by ``config`` (from :meth:`Method.to_config`)."""
    if not isinstance(config, Mapping) or not isinstance(config.get("name"), str):
        raise ValueError(f"a method config is a dict with a 'name' and 'options', got {config!r}")
    return build(config["name"], **dict(config.get("options", {})))
