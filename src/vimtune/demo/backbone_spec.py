"""Which backbone the demo and the transfer benchmark start from: a timm name, its overrides and its weights.

Imports nothing heavy, so that ``vimtune demo --help`` shows :data:`DEFAULT_BACKBONE` without
importing torch; timm is imported when a spec looks up the model's registered config.
:mod:`~vimtune.demo.backbone` resolves a spec to its weights file and writes fresh heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The backbone of ``vimtune demo`` and ``vimtune bench transfer`` (pretrained on CIFAR-10 by this project).
DEFAULT_BACKBONE = "vim_micro_patch4_32"


class MissingWeightsError(RuntimeError):
    """Pretrained weights were asked for but the backbone has none on this machine."""


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone to fine-tune.

    Attributes:
        name: a timm model name registered by :mod:`vimtune.models`.
        kwargs: constructor overrides (``depth``, ``embed_dim``, ``img_size``...).
        weights: an explicit weights file (release ``.pth``, state dict or ``.safetensors``);
            takes precedence over ``pretrained``.
        pretrained: use the weights registered with timm for ``name`` (the committed ones).
    """

    name: str = DEFAULT_BACKBONE
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    pretrained: bool = True

    def img_size(self) -> int:
        """Input side in pixels: ``kwargs['img_size']``, else the model's default input size."""
        if "img_size" in self.kwargs:
            return int(self.kwargs["img_size"])
        return int(self._pretrained_cfg().input_size[-1])

    def weights_file(self) -> Path | None:
        """The weights to start from, ``None`` for a random initialisation (``pretrained=False``).

        Raises:
            FileNotFoundError: an explicit ``weights`` file that does not exist.
            MissingWeightsError: ``pretrained`` but no weights are registered for ``name`` or the
                registered file is missing.
        """
        if self.weights:
            path = Path(self.weights)
            if not path.is_file():
                raise FileNotFoundError(f"backbone weights '{path}' not found")
            return path
        if not self.pretrained:
            return None
        file = self._pretrained_cfg().file
        if not file:
            raise MissingWeightsError(
                f"{self.name} has no pretrained weights registered: pass --backbone-weights PATH, "
                "or --no-pretrained for a random backbone")
        if not Path(file).is_file():
            raise MissingWeightsError(
                f"the committed weights of {self.name} are missing: '{file}' does not exist (not trained/committed "
                "yet?); pass --backbone-weights PATH, or --no-pretrained for a random backbone")
        return Path(file)

    def _pretrained_cfg(self) -> Any:
        from timm.models import get_pretrained_cfg  # timm (and torch) only once a run needs the config

        cfg = get_pretrained_cfg(self.name)
        if cfg is None:
            raise ValueError(f"unknown backbone {self.name!r}; see `vimtune info` for the registered models")
        return cfg
