"""``svp``: Selective Visual Prompting (Yao, Liu, Cui, Peng, Zhou, AAAI 2025, arXiv:2412.08947).

Before every block, each token except the cls token gets a token-wise prompt made from itself
(SPEC-SVP section 2)::

    inner_l(t) = silu(up_l(down_l(t)))               # D -> r -> D, no activation between
    cross_g(t) = silu(cross_g(t))                    # D -> D, shared by the s layers of group g
    prompt(t, l) = t + beta_l * inner_l(t) + alpha_g * cross_g(t),   g = l // s

``beta`` (depth, D) and ``alpha`` (G, D) start at zero, so an attached model computes exactly
the backbone at first. Layer 0 prompts the embedded tokens, layer l >= 1 the mixer output of
block l-1 before its residual add (the model's ``Block.prompter`` hook).

Groups: G = ceil(depth / s). When s divides the depth this is the paper's depth // s; otherwise
the last group is shorter (depth // s would leave the last depth % s layers without a cross
prompter).

Variants: ``paper`` feeds every token's own value to both paths. ``release`` reproduces the
authors' code, which prompts the tokens before the cls token in place and then computes the
tokens after it with ``shared_generator(x[:, :cls])``: the cross path of the j-th token after the
cls token is fed the j-th token before it, *after* that token was prompted (its value
``t + beta*inner(t) + alpha*cross(t)``, gradients flowing through it); the inner path uses the
token's own value. The release crashes when the counts differ (an odd number of patches); here a
token after the cls token without a counterpart before it (the last one, for an odd count) uses
its own value, as in the paper.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from vimtune.methods.base import Method, param_names, place_like
from vimtune.methods.prompt_update import prompt_update
from vimtune.methods.simam import add_simam
from vimtune.models.vim import VisionMamba
from vimtune.ops.cpu_linear import Linear


@dataclass(frozen=True)
class SVPOptions:
    """Options of ``svp``.

    Attributes:
        rank: inner generators' bottleneck r (64 in the release; 128 also offered there).
        group_size: s, layers per cross-prompter group (4, 6, 8, 12 or 24 in the release).
        inner, cross: keep the inner / cross path (ablations; at least one).
        variant: ``"paper"`` (each token's own value) or ``"release"`` (the authors' code, see module doc).
        head: ``"linear"`` or ``"two-layer"`` (``Linear(D, D/2) -> Linear(D/2, C)``, the release's
            head for CUB, NABirds, Flowers).
        simam: reweight the input image with parameter-free SimAM (the release's CIFAR/Flowers runs).
    """

    rank: int = 64
    group_size: int = 8
    inner: bool = True
    cross: bool = True
    variant: Literal["paper", "release"] = "paper"
    head: Literal["linear", "two-layer"] = "linear"
    simam: bool = False

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"svp: rank must be >= 1, got {self.rank}")
        if self.group_size < 1:
            raise ValueError(f"svp: group_size must be >= 1, got {self.group_size}")
        if not (self.inner or self.cross):
            raise ValueError("svp: inner and cross cannot both be off (nothing would be prompted)")


def num_groups(depth: int, group_size: int) -> int:
    """G, the number of cross prompters: ceil(depth / group_size)."""
    return math.ceil(depth / group_size)


def release_cross_input(prompted_pre: Tensor, post: Tensor) -> Tensor:
    """Cross-path input of the tokens after the cls token in the ``release`` variant.

    Args:
        prompted_pre: (B, m, D) the tokens before the cls token, already prompted.
        post: (B, n, D) the tokens after the cls token, not prompted yet.

    Returns:
        (B, n, D): token j is ``prompted_pre[:, j]`` for j < m, else ``post[:, j]``.
    """
    count = min(prompted_pre.shape[1], post.shape[1])
    return torch.cat([prompted_pre[:, :count], post[:, count:]], dim=1)


class SelectivePrompts(nn.Module):
    """All SVP parameters of a model (registered once, as ``model.svp``).

    Parameters: ``inner.{l}.down`` Linear(D, r), ``inner.{l}.up`` Linear(r, D), ``beta``
    (depth, D) when the inner path is on; ``cross.{g}`` Linear(D, D), ``alpha`` (G, D) when the
    cross path is on. Generators are vimtune's :class:`~vimtune.ops.cpu_linear.Linear` (an nn.Linear with
    its default init); the scales start at zero.
    """

    def __init__(self, dim: int, depth: int, rank: int, group_size: int, inner: bool = True,
                 cross: bool = True, variant: str = "paper") -> None:
        super().__init__()
        if variant not in ("paper", "release"):
            raise ValueError(f"variant must be 'paper' or 'release', got {variant!r}")
        self.depth, self.group_size, self.variant = depth, group_size, variant
        self.inner = self.beta = self.cross = self.alpha = None
        if inner:
            self.inner = nn.ModuleList(
                nn.Sequential(OrderedDict(down=Linear(dim, rank), up=Linear(rank, dim)))
                for _ in range(depth)
            )
            self.beta = nn.Parameter(torch.zeros(depth, dim))
        if cross:
            groups = num_groups(depth, group_size)
            self.cross = nn.ModuleList(Linear(dim, dim) for _ in range(groups))
            self.alpha = nn.Parameter(torch.zeros(groups, dim))

    def extra_repr(self) -> str:
        return f"depth={self.depth}, group_size={self.group_size}, variant={self.variant!r}"

    def update(self, hidden: Tensor, inner_input: Tensor, cross_input: Tensor, layer: int,
               keep_token: int | None = None) -> Tensor:
        """``hidden + beta_l * inner_l(inner_input) + alpha_g * cross_g(cross_input)``, all (B, n, D).

        Token ``keep_token`` (dim 1), when given, is left as in ``hidden``. Pass the same tensor
        as both inputs where they agree: both generators then save one copy.
        """
        pairs = []
        if self.inner is not None:
            pairs += [self.inner[layer](inner_input), self.beta[layer]]
        if self.cross is not None:
            group = layer // self.group_size
            pairs += [self.cross[group](cross_input), self.alpha[group]]
        return prompt_update(hidden, keep_token, *pairs)

    def forward(self, hidden: Tensor, cls_index: int, layer: int) -> Tensor:
        """Prompt every token of ``hidden`` (B, T, D) but the cls token at ``cls_index`` for ``layer``."""
        if self.variant == "release":
            return self._forward_release(hidden, cls_index, layer)
        # paper: every token's own value feeds both paths, so the generators run on the whole
        # contiguous sequence at once (down and cross save the same input, nothing is sliced or
        # concatenated) and the update leaves the cls token bitwise as it came.
        hidden = hidden.contiguous()
        return self.update(hidden, hidden, hidden, layer, keep_token=cls_index)

    def _forward_release(self, hidden: Tensor, cls_index: int, layer: int) -> Tensor:
        """The ``release`` variant (module docstring): pre-cls tokens first, then the post-cls ones."""
        pre = hidden[:, :cls_index].contiguous()  # one copy shared by the inner and cross paths
        cls, post = hidden[:, cls_index:cls_index + 1], hidden[:, cls_index + 1:].contiguous()
        pre = self.update(pre, pre, pre, layer)
        post = self.update(post, post, release_cross_input(pre, post), layer)
        return torch.cat([pre, cls, post], dim=1)


class LayerPrompter(nn.Module):
    """The ``Block.prompter`` of one layer: applies the model's :class:`SelectivePrompts` for it.

    Holds a plain reference to the prompts, not a submodule, so their parameters are stored once
    (under ``svp.``) and not again under every ``layers.{l}.prompter``.
    """

    def __init__(self, prompts: SelectivePrompts, layer: int) -> None:
        super().__init__()
        self.__dict__["prompts"] = prompts  # bypasses nn.Module registration on purpose
        self.layer = layer

    def extra_repr(self) -> str:
        return f"layer={self.layer}"

    def forward(self, hidden: Tensor, cls_index: int) -> Tensor:
        """(B, T, D) -> (B, T, D), the cls token unchanged."""
        return self.prompts(hidden, cls_index, self.layer)


class SVP(Method):
    """Selective Visual Prompting: trains the prompt generators, their scales and the head."""

    name = "svp"
    options_type = SVPOptions
    slots = frozenset({"prompter", "input"})

    @property
    def head_kind(self) -> str:
        return self.options.head

    def insert(self, model: VisionMamba) -> None:
        if "svp" in model._modules or any(layer.prompter is not None for layer in model.layers):
            raise RuntimeError("svp: the model already has prompters attached")
        opts = self.options
        prompts = SelectivePrompts(model.embed_dim, len(model.layers), opts.rank, opts.group_size,
                                   inner=opts.inner, cross=opts.cross, variant=opts.variant)
        model.svp = place_like(prompts, model)
        for index, layer in enumerate(model.layers):
            layer.prompter = LayerPrompter(model.svp, index)
        if opts.simam:
            add_simam(model)

    def trained_names(self, model: VisionMamba) -> set[str]:
        return param_names(model, lambda name: name.startswith("svp."))

    def own_no_decay_names(self, model: VisionMamba) -> set[str]:
        return param_names(model, lambda name: name in ("svp.beta", "svp.alpha"))

