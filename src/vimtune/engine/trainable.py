"""What the engine needs to know about the trained part of a model.

A :class:`vimtune.methods.Method` (``vimtune finetune``) satisfies :class:`Trainable`;
:class:`WholeModel` is the trainable part of a network trained from scratch (``vimtune train``).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from vimtune.models.checkpoint import check_keys


class Trainable(Protocol):
    """The parameters that train, their saved state, and their weight-decay exclusions."""

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]: ...

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]: ...

    def load_trainable_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None: ...

    def no_weight_decay_names(self, model: nn.Module) -> set[str]: ...


class WholeModel:
    """Every parameter trains; the saved state is the full ``state_dict``."""

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return list(model.named_parameters())

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return model.state_dict()

    def load_trainable_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Exact load; raises :class:`vimtune.models.CheckpointError` listing the keys that differ."""
        check_keys(state, model)
        model.load_state_dict(state)

    def no_weight_decay_names(self, model: nn.Module) -> set[str]:
        return set()
