"""``lora``: low-rank updates of the mixer's linear layers (Hu et al., "LoRA", ICLR 2022).

A target ``Linear(in, out)`` with weight W computes ``W x + (alpha / rank) * up(down(dropout(x)))``,
``down`` (rank, in) Kaiming-uniform like nn.Linear, ``up`` (out, rank) zero, so an attached
model starts as the backbone. Targets (per layer, in ``layers.{i}.mixer``): ``in_proj``,
``x_proj``, ``x_proj_b``, ``out_proj``, ``dt_proj``, ``dt_proj_b``.

Two ways in, one update:

- ``in_proj``/``x_proj``/``out_proj`` (called as modules) become :class:`LoRALinear`, an
  nn.Linear that keeps the original ``weight``/``bias`` (same names in the state dict) and adds
  the low-rank path under ``<target>.lora``.
- ``dt_proj``/``dt_proj_b``: the mixer reads ``dt_proj.weight`` directly (its bias is added
  inside the scan), so a wrapper's forward would never run. Their weight is parametrized
  (``torch.nn.utils.parametrize``) as ``W + (alpha / rank) * up @ down``; the frozen W then sits
  at ``dt_proj.parametrizations.weight.original``. There is no input to drop out, so ``dropout``
  does not apply to these targets.

:func:`merge_lora` folds every update into its weight for inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from vimtune.methods.base import Method, param_names, place_like
from vimtune.models.vim import VisionMamba
from vimtune.ops.cpu_linear import Linear

MODULE_TARGETS = ("in_proj", "x_proj", "x_proj_b", "out_proj")
WEIGHT_TARGETS = ("dt_proj", "dt_proj_b")  # read as .weight by the mixer, never called
TARGETS = MODULE_TARGETS + WEIGHT_TARGETS


@dataclass(frozen=True)
class LoRAOptions:
    """Options of ``lora``: ``rank`` r, ``alpha`` (scaling alpha / r), input ``dropout``, ``targets``."""

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("in_proj",)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora: rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora: dropout must be in [0, 1), got {self.dropout}")
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown or not self.targets:
            raise ValueError(f"lora: targets must be a non-empty subset of {list(TARGETS)}, got {list(self.targets)}")


class LowRankUpdate(nn.Module):
    """The update of a ``Linear(in_features, out_features)``: ``scaling * up @ down``."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.scaling = alpha / rank
        self.down = nn.Parameter(torch.empty(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def extra_repr(self) -> str:
        return f"rank={self.down.shape[0]}, scaling={self.scaling:g}"

    def delta_weight(self) -> Tensor:
        """(out_features, in_features) weight update."""
        return self.scaling * (self.up @ self.down)

    def forward(self, x: Tensor) -> Tensor:
        """Low-rank path of an input (..., in_features) -> (..., out_features)."""
        return self.scaling * F.linear(F.linear(self.dropout(x), self.down.to(x.dtype)), self.up.to(x.dtype))


class LoRALinear(Linear):
    """A :class:`~vimtune.ops.cpu_linear.Linear` (an nn.Linear) plus a :class:`LowRankUpdate` path;
    (..., in) -> (..., out).

    Takes over the wrapped layer's ``weight`` and ``bias`` parameters (the very same tensors,
    under the same names), so backbone state dicts still load into it.
    """

    def __init__(self, linear: nn.Linear, update: LowRankUpdate) -> None:
        nn.Module.__init__(self)  # nn.Linear.__init__ would allocate fresh weights
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        self.lora = update

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.lora(x)

    @torch.no_grad()
    def merged(self) -> Linear:
        """A plain Linear computing the same function (the update folded into its weight)."""
        plain = Linear(self.in_features, self.out_features, bias=self.bias is not None,
                       device=self.weight.device, dtype=self.weight.dtype)
        plain.weight.copy_(self.weight + self.lora.delta_weight().to(self.weight.dtype))
        if self.bias is not None:
            plain.bias.copy_(self.bias)
        return plain.requires_grad_(self.weight.requires_grad)


class AddUpdate(nn.Module):
    """Parametrization ``W -> W + update.delta_weight()`` (for weights the mixer reads directly)."""

    def __init__(self, update: LowRankUpdate) -> None:
        super().__init__()
        self.lora = update

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.lora.delta_weight().to(weight.dtype)


class LoRA(Method):
    """Low-rank adaptation of the chosen mixer linears; trains the updates and the head."""

    name = "lora"
    options_type = LoRAOptions
    slots = frozenset({"mixer-linears"})

    def insert(self, model: VisionMamba) -> None:
        opts = self.options
        for layer in model.layers:
            mixer = layer.mixer
            for target in opts.targets:
                linear = getattr(mixer, target)
                if isinstance(linear, LoRALinear) or parametrize.is_parametrized(linear):
                    raise RuntimeError(f"lora: {target} already carries a low-rank update")
                update = place_like(LowRankUpdate(linear.in_features, linear.out_features, opts.rank,
                                                  opts.alpha, opts.dropout), model)
                if target in WEIGHT_TARGETS:
                    parametrize.register_parametrization(linear, "weight", AddUpdate(update))
                else:
                    setattr(mixer, target, LoRALinear(linear, update))

    def trained_names(self, model: VisionMamba) -> set[str]:
        return param_names(model, lambda name: ".lora." in name)

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold the updates into the weights (see :func:`merge_lora`); returns ``model``."""
        return merge_lora(model)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRA-carrying layer of ``model`` by a plain Linear with W + delta W, in place.

    The merged model computes the same function without the extra path (up to float rounding)
    and has the backbone's state-dict names again; the updates are no longer trainable.
    """
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, child_name, child.merged())
            elif parametrize.is_parametrized(child, "weight") and any(
                isinstance(p, AddUpdate) for p in child.parametrizations.weight
            ):
                parametrize.remove_parametrizations(child, "weight", leave_parametrized=True)
    return model
