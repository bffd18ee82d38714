"""``linear``: linear probing, only the head is trained."""

from __future__ import annotations

from vimtune.methods.base import Method
from vimtune.models.vim import VisionMamba


class LinearProbe(Method):
    """Trains the head only; the whole backbone is frozen. Every other method trains the head
    too, so ``linear`` composes with nothing."""

    name = "linear"
    standalone = "every method trains the head already"

    def trained_names(self, model: VisionMamba) -> set[str]:
        return set()
