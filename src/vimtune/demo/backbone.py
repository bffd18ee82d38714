"""The backbone the demo and the transfer benchmark start from, resolved: its weights file and fresh heads.

What is asked for is a :class:`~vimtune.demo.backbone_spec.BackboneSpec` (re-exported here). By
default that is :data:`DEFAULT_BACKBONE` with ``pretrained=True``: the weights committed in
``vimtune/weights/`` and registered with timm (``timm.create_model(name, pretrained=True)``
finds them offline). Every fine-tuning run gets a *fresh* classification head: the backbone file
handed to the engine holds the pretrained weights with the head replaced by the head a new model
of that seed would have (see :meth:`ResolvedBackbone.weights_for`), so that a pretrained head of
the same class count (CIFAR-10 -> a 10-class task) is never carried over.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file

from vimtune.demo.backbone_spec import DEFAULT_BACKBONE as DEFAULT_BACKBONE
from vimtune.demo.backbone_spec import BackboneSpec, MissingWeightsError
from vimtune.models import read_state_dict

RANDOM_BACKBONE_WARNING = (
    "WARNING: the backbone is RANDOMLY INITIALISED ({reason}); the accuracies below do not measure "
    "transfer from pretraining"
)


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (results files then name no
    checkout location), else absolute."""
    resolved = path.resolve()
    return str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) else str(resolved)


@dataclass(frozen=True)
class ResolvedBackbone:
    """A :class:`BackboneSpec` with its weights file found (``None``: random initialisation).

    Attributes:
        spec: what was asked for.
        file: the weights file, or ``None``.
        sha256: the file's SHA-256 (identifies the weights in result files), or ``None``.
        warning: set when the weights are random although pretrained ones were asked for.
    """

    spec: BackboneSpec
    file: Path | None
    sha256: str | None
    warning: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the backbone (name, kwargs, weights file and hash)."""
        return {
            "name": self.spec.name,
            "kwargs": dict(self.spec.kwargs),
            "weights": shown_path(self.file) if self.file else None,
            "weights_sha256": self.sha256,
            "random_init": self.file is None,
            **({"warning": self.warning} if self.warning else {}),
        }

    def weights_for(self, num_classes: int, seed: int, directory: Path) -> Path | None:
        """A weights file for a ``num_classes`` task: the backbone's weights with a fresh head.

        The head is that of ``timm.create_model(name, num_classes=num_classes, **kwargs)`` built
        under ``seed`` (the global RNG is left as it was). Written once to ``directory`` and
        reused. ``None`` for a random backbone: the engine then initialises everything itself.
        """
        if self.file is None:
            return None
        path = directory / f"{self.spec.name}-{self.sha256[:12]}-c{num_classes}-s{seed}.safetensors"
        if path.is_file():
            return path
        state = {k: v for k, v in read_state_dict(self.file).items() if not k.startswith("head.")}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = timm.create_model(self.spec.name, num_classes=num_classes, **self.spec.kwargs)
        state.update({f"head.{k}": v for k, v in fresh.head.state_dict().items()})
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        save_file({k: v.contiguous() for k, v in state.items()}, str(partial))
        partial.replace(path)
        return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_backbone(spec: BackboneSpec, random_fallback: bool = False) -> ResolvedBackbone:
    """Find the weights of ``spec``.

    Args:
        spec: the backbone asked for.
        random_fallback: when the pretrained weights are missing, continue with a random
            backbone (:attr:`ResolvedBackbone.warning` says so, for the caller to print and to
            keep in its result files) instead of raising.

    Raises:
        MissingWeightsError: pretrained weights missing and no ``random_fallback``.
    """
    try:
        file = spec.weights_file()
    except MissingWeightsError as err:
        if not random_fallback:
            raise
        return ResolvedBackbone(spec, None, None, RANDOM_BACKBONE_WARNING.format(reason=err))
    if file is None:
        return ResolvedBackbone(spec, None, None, RANDOM_BACKBONE_WARNING.format(reason="--no-pretrained"))
    return ResolvedBackbone(spec, file, _sha256(file))
