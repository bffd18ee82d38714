"""The method protocol: one object per fine-tuning method says what is inserted and what is trained.

A :class:`Method` is built from a typed options dataclass, attached in place to a
:class:`~vimtune.models.vim.VisionMamba` (head reset, modules inserted, everything frozen except
what the method trains plus the head), and then answers which parameters it trains, how to save
and restore them, and which of them take no weight decay.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, get_args, get_origin, get_type_hints

import torch
from torch import Tensor, nn

from vimtune.methods.head import set_head
from vimtune.models.checkpoint import CheckpointError
from vimtune.models.vim import VisionMamba


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a method that has none."""


def _coerce(method: str, name: str, hint: Any, value: Any) -> Any:
    """Check ``value`` against the type ``hint`` of option ``name``; lists become tuples, ints floats."""
    origin, args = get_origin(hint), get_args(hint)
    expected: str
    if origin is Literal:
        if value in args:
            return value
        raise ValueError(f"{method}: option {name}={value!r} is not one of {list(args)}")
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(method, name, args[0], item) for item in value)
        expected = f"a list of {args[0].__name__}"
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        expected = "a number"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "an integer"
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
        expected = hint.__name__
    else:  # pragma: no cover - guards against an option type this parser does not know
        raise TypeError(f"{method}: option {name} has an unsupported type {hint!r}")
    raise TypeError(f"{method}: option {name} must be {expected}, got {value!r}")


def parse_options(method: str, options_type: type, options: Mapping[str, Any]) -> Any:
    """Build ``options_type`` (a dataclass) from ``options``, type-checked.

    Raises:
        TypeError: an unknown option (the message lists the valid ones) or a value of the wrong type.
        ValueError: a value outside its allowed set or range.
    """
    hints = get_type_hints(options_type)
    valid = [f.name for f in dataclasses.fields(options_type)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"{method}: unknown option(s) {unknown}; valid options: {valid or 'none'}")
    return options_type(**{k: _coerce(method, k, hints[k], v) for k, v in options.items()})


def param_names(model: nn.Module, predicate: Callable[[str], bool]) -> set[str]:
    """Names of the parameters of ``model`` whose name satisfies ``predicate``."""
    return {name for name, _ in model.named_parameters() if predicate(name)}


def require_vim(model: nn.Module) -> VisionMamba:
    """``model`` itself, checked to be a VisionMamba (the hook points methods rely on)."""
    if not isinstance(model, VisionMamba):
        raise TypeError(f"fine-tuning methods attach to a vimtune VisionMamba, got {type(model).__name__}")
    return model


def place_like(module: nn.Module, model: nn.Module) -> nn.Module:
    """Move a freshly built ``module`` to the device and floating dtype of ``model``'s parameters."""
    reference = next(model.parameters())
    return module.to(device=reference.device, dtype=reference.dtype)


class Method(ABC):
    """A fine-tuning method: what it inserts into a Vim backbone and what it trains.

    Subclasses set ``name``, ``options_type`` (a dataclass), ``slots`` (the model hook points
    they occupy, so that compositions can refuse clashes), ``standalone`` (why the method cannot
    be combined with others; empty if it can) and implement :meth:`trained_names`; those that
    add modules override :meth:`insert`. The head is always trained.
    """

    name: ClassVar[str]
    options_type: ClassVar[type] = NoOptions
    slots: ClassVar[frozenset[str]] = frozenset()
    standalone: ClassVar[str] = ""

    def __init__(self, options: Any = None) -> None:
        self.options = self.options_type() if options is None else options

    @classmethod
    def from_options(cls, **options: Any) -> Method:
        """The method with ``options`` parsed into its dataclass (see :func:`parse_options`)."""
        return cls(parse_options(cls.name, cls.options_type, options))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"

    # ------------------------------------------------------------------ what subclasses define
    @property
    def head_kind(self) -> str:
        """Head the method wants: ``"linear"`` or ``"two-layer"``."""
        return "linear"

    def insert(self, model: VisionMamba) -> None:  # noqa: B027 - optional step, nothing by default
        """Add the method's modules to ``model`` (in place, on the model's device and dtype)."""

    @abstractmethod
    def trained_names(self, model: VisionMamba) -> set[str]:
        """Names of the parameters the method trains, the head excluded."""

    def own_no_decay_names(self, model: VisionMamba) -> set[str]:
        """The method's parameters that take no weight decay although they are not 1-D/biases."""
        return set()

    # ------------------------------------------------------------------ the protocol
    def attach(self, model: nn.Module, num_classes: int | None = None) -> nn.Module:
        """Prepare ``model`` in place and return it.

        Resets the head when ``num_classes`` is given and differs (or a two-layer head is asked
        for), inserts the method's modules, freezes every parameter and unfreezes those of
        :meth:`trainable_parameters`.
        """
        vim = require_vim(model)
        set_head(vim, num_classes, self.head_kind)
        self.insert(vim)
        vim.requires_grad_(False)
        for _, param in self.trainable_parameters(vim):
            param.requires_grad_(True)
        return vim

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything the method trains, the head included, in model order."""
        names = self.trained_names(require_vim(model)) | param_names(model, lambda n: n.startswith("head."))
        return [(name, param) for name, param in model.named_parameters() if name in names]

    def trainable_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The trained tensors by parameter name (detached, sharing storage with the model)."""
        return {name: param.detach() for name, param in self.trainable_parameters(model)}

    def load_trainable_state(self, model: nn.Module, state: Mapping[str, Tensor]) -> None:
        """Copy ``state`` (from :meth:`trainable_state`) into ``model``; strict on names and shapes.

        Raises:
            CheckpointError: listing missing, unexpected and mis-shaped keys.
        """
        params = dict(self.trainable_parameters(model))
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        mis_shaped = [
            f"{k}: state {tuple(state[k].shape)} vs model {tuple(p.shape)}"
            for k, p in params.items()
            if k in state and state[k].shape != p.shape
        ]
        problems = [f"{len(keys)} {title}: {', '.join(keys)}" for title, keys in
                    (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)) if keys]
        if problems:
            raise CheckpointError(f"trainable state does not fit method {self.name!r}: " + "; ".join(problems))
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name])

    def no_weight_decay_names(self, model: nn.Module) -> set[str]:
        """Trained parameters that take no weight decay, besides 1-D parameters and biases.

        The method's own (e.g. SVP's scales) plus the backbone's ``no_weight_decay()`` names
        (``pos_embed``, ``cls_token``) when the method trains them.
        """
        vim = require_vim(model)
        trained = {name for name, _ in self.trainable_parameters(vim)}
        return self.own_no_decay_names(vim) | (set(vim.no_weight_decay()) & trained)

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """``trainable`` and ``total`` parameter counts and the trainable ``share`` (0..1)."""
        trainable = sum(p.numel() for _, p in self.trainable_parameters(model))
        total = sum(p.numel() for p in model.parameters())
        return {"trainable": trainable, "total": total, "share": trainable / total if total else 0.0}

    def to_config(self) -> dict[str, Any]:
        """JSON-able ``{"name": ..., "options": {...}}``; ``build(**)`` of it gives this method back."""
        return {"name": self.name, "options": dataclasses.asdict(self.options)}
