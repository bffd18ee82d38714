"""``adapter``: a parallel bottleneck adapter around every mixer (AdaptFormer-style, Chen et al. 2022).

For the mixer input n = RMSNorm(r) (B, T, D): ``out = mixer(n) + scale * up(relu(down(n)))``,
``down`` Linear(D, bottleneck), ``up`` Linear(bottleneck, D) zero-initialised, so an attached model
starts as the backbone. The adapter is registered as ``layers.{i}.mixer.adapter`` and added
through a forward hook of the mixer, which leaves the backbone's state-dict names unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from vimtune.methods.base import Method, param_names, place_like
from vimtune.models.vim import VisionMamba
from vimtune.ops.cpu_linear import Linear


@dataclass(frozen=True)
class AdapterOptions:
    """Options of ``adapter``: ``bottleneck`` width and output ``scale`` s."""

    bottleneck: int = 8
    scale: float = 0.1

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise ValueError(f"adapter: bottleneck must be >= 1, got {self.bottleneck}")


class ParallelAdapter(nn.Module):
    """``scale * up(relu(down(x)))``; (B, T, D) -> (B, T, D), zero at initialisation."""

    def __init__(self, dim: int, bottleneck: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.down = Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.up = Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.up(self.act(self.down(x)))


def _add_adapter_output(mixer: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
    """Forward hook of a mixer: its output (B, T, D) plus its adapter applied to its input."""
    return output + mixer.adapter(args[0]).to(output.dtype)


class Adapter(Method):
    """Parallel bottleneck adapters around the mixers; trains them and the head."""

    name = "adapter"
    options_type = AdapterOptions
    slots = frozenset({"mixer-output"})

    def insert(self, model: VisionMamba) -> None:
        for layer in model.layers:
            if "adapter" in layer.mixer._modules:
                raise RuntimeError("adapter: the mixers already have adapters attached")
            adapter = ParallelAdapter(model.embed_dim, self.options.bottleneck, self.options.scale)
            layer.mixer.adapter = place_like(adapter, model)
            layer.mixer.register_forward_hook(_add_adapter_output)

    def trained_names(self, model: VisionMamba) -> set[str]:
        return param_names(model, lambda name: ".mixer.adapter." in name)
