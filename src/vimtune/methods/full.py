"""``full``: full fine-tuning, every parameter is trained."""

from __future__ import annotations

from vimtune.methods.base import Method, param_names
from vimtune.models.vim import VisionMamba


class FullFineTune(Method):
    """Trains every parameter of the model (so it composes with nothing). ``pos_embed`` and
    ``cls_token`` are reported by :meth:`no_weight_decay_names`."""

    name = "full"
    standalone = "it trains every parameter already"

    def trained_names(self, model: VisionMamba) -> set[str]:
        return param_names(model, lambda name: True)
