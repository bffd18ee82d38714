"""Compositions such as ``svp+lora``: several methods attached to one model, trained together.

Options are routed by prefix: the part's name with ``-`` as ``_``, then ``_`` (``svp_rank``,
``lora_targets``, ``vpt_deep_num_tokens``). A composition is refused when a part is standalone
(``full``, ``linear``), appears twice, or shares a hook point with another part (e.g.
``vpt-shallow+vpt-deep`` both need ``embed_hook``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vimtune.methods.base import Method
from vimtune.models.vim import VisionMamba


def option_prefix(method_name: str) -> str:
    """Prefix of a part's options in a composition: ``"vpt-deep"`` -> ``"vpt_deep_"``."""
    return method_name.replace("-", "_") + "_"


def check_composable(classes: Sequence[type[Method]]) -> None:
    """Raise ValueError if the methods ``classes`` cannot be attached together."""
    names = [cls.name for cls in classes]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{'+'.join(names)}: {repeated} appear more than once")
    for cls in classes:
        if cls.standalone:
            raise ValueError(f"{'+'.join(names)}: {cls.name!r} does not combine with other methods: {cls.standalone}")
    for i, first in enumerate(classes):
        for second in classes[i + 1:]:
            shared = first.slots & second.slots
            if shared:
                raise ValueError(
                    f"{'+'.join(names)}: {first.name!r} and {second.name!r} both use the model's {sorted(shared)}"
                )


def route_options(names: Sequence[str], valid: dict[str, list[str]], options: dict[str, Any]) -> dict[str, dict]:
    """Split prefixed composition ``options`` into per-part options.

    Args:
        names: the parts' method names. valid: each part's option names (unprefixed).
        options: e.g. ``{"svp_rank": 32, "lora_rank": 4}``.

    Raises:
        TypeError: an option that no part has (the message lists the valid prefixed options).
    """
    routed: dict[str, dict] = {name: {} for name in names}
    accepted = {option_prefix(name) + key: (name, key) for name in names for key in valid[name]}
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"{'+'.join(names)}: unknown option(s) {unknown}; valid options: {list(accepted)}")
    for key, value in options.items():
        name, part_key = accepted[key]
        routed[name][part_key] = value
    return routed


@dataclass(frozen=True)
class CompositeOptions:
    """Options of a composition: the parts' option dataclasses, in order."""

    parts: tuple[Any, ...]


class Composite(Method):
    """Several methods attached to one model; trains the union of what they train (+ head)."""

    options_type = CompositeOptions

    def __init__(self, parts: Sequence[Method]) -> None:
        check_composable([type(part) for part in parts])
        self.parts = list(parts)
        self.name = "+".join(part.name for part in parts)
        super().__init__(CompositeOptions(tuple(part.options for part in parts)))

    @property
    def head_kind(self) -> str:
        kinds = {part.head_kind for part in self.parts}
        return "two-layer" if "two-layer" in kinds else "linear"

    def insert(self, model: VisionMamba) -> None:
        for part in self.parts:
            part.insert(model)

    def trained_names(self, model: VisionMamba) -> set[str]:
        return set().union(*(part.trained_names(model) for part in self.parts))

    def own_no_decay_names(self, model: VisionMamba) -> set[str]:
        return set().union(*(part.own_no_decay_names(model) for part in self.parts))

    def to_config(self) -> dict[str, Any]:
        """``{"name": "svp+lora", "options": {"svp_rank": ..., "lora_rank": ...}}`` (prefixed)."""
        options = {
            option_prefix(part.name) + key: value
            for part in self.parts
            for key, value in dataclasses.asdict(part.options).items()
        }
        return {"name": self.name, "options": options}
