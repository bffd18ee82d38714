"""``vpt-shallow`` / ``vpt-deep``: learnable prompt tokens (Jia et al., "Visual Prompt Tuning", ECCV 2022).

P prompt tokens are inserted into the embedded sequence (after ``pos_embed``, through the
model's ``embed_hook``) at one of three positions, the cls token index moving accordingly:

- ``prefix``: ``[prompts, patches before cls, cls, patches after]``, cls index m + P
- ``middle``: ``[patches before, ceil(P/2) prompts, cls, floor(P/2) prompts, patches after]``,
  cls index m + ceil(P/2) (the cls token sits among the prompts, reached from both scan directions)
- ``suffix``: ``[patches before, cls, patches after, prompts]``, cls index m

(m = M // 2 for M patches.) ``vpt-deep`` also replaces the prompt tokens of the residual stream
before every later block (through ``Block.residual_hook``) with that block's own prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from vimtune.methods.base import Method, param_names, place_like
from vimtune.models.vim import VisionMamba


@dataclass(frozen=True)
class VPTOptions:
    """Options of ``vpt-shallow`` / ``vpt-deep``: ``num_tokens`` prompts per layer, their ``position``."""

    num_tokens: int = 10
    position: Literal["prefix", "middle", "suffix"] = "prefix"

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"vpt: num_tokens must be >= 1, got {self.num_tokens}")


class PromptTokens(nn.Module):
    """``prompts`` (P, D) and where they go relative to the cls token.

    Initialised uniformly in +-sqrt(6 / (patch_pixels + D)), the Xavier-style bound of VPT
    (``patch_pixels`` = in_chans * patch_h * patch_w).
    """

    def __init__(self, num_tokens: int, dim: int, position: str, patch_pixels: int) -> None:
        super().__init__()
        self.position = position
        bound = math.sqrt(6.0 / (patch_pixels + dim))
        self.prompts = nn.Parameter(torch.empty(num_tokens, dim).uniform_(-bound, bound))

    @property
    def num_extra_tokens(self) -> int:
        """P, the number of tokens the prompts add to the sequence."""
        return self.prompts.shape[0]

    def before_cls(self) -> int:
        """How many prompts sit before the cls token (the shift of its index)."""
        count = self.num_extra_tokens
        return {"prefix": count, "middle": (count + 1) // 2, "suffix": 0}[self.position]

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_extra_tokens}, position={self.position!r}"

    def insert(self, tokens: Tensor, cls_index: int) -> tuple[Tensor, int]:
        """Tokens (B, N, D) without prompts -> (B, N + P, D) with them, and the new cls index."""
        prompts = self.prompts.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        before = self.before_cls()
        if self.position == "prefix":
            pieces = [prompts, tokens]
        elif self.position == "suffix":
            pieces = [tokens, prompts]
        else:
            pieces = [tokens[:, :cls_index], prompts[:, :before], tokens[:, cls_index:cls_index + 1],
                      prompts[:, before:], tokens[:, cls_index + 1:]]
        return torch.cat(pieces, dim=1), cls_index + before

    def remove(self, tokens: Tensor, cls_index: int) -> tuple[Tensor, int]:
        """Inverse of :meth:`insert`: (B, N + P, D) -> (B, N, D) and the cls index without prompts."""
        count, before = self.num_extra_tokens, self.before_cls()
        if self.position == "prefix":
            kept = tokens[:, count:]
        elif self.position == "suffix":
            kept = tokens[:, :tokens.shape[1] - count]
        else:
            after = count - before
            kept = torch.cat([tokens[:, :cls_index - before], tokens[:, cls_index:cls_index + 1],
                              tokens[:, cls_index + 1 + after:]], dim=1)
        return kept, cls_index - before


class EmbedPrompts(PromptTokens):
    """The ``VisionMamba.embed_hook`` of VPT: inserts the first layer's prompts."""

    def cls_index(self, num_patches: int) -> int:
        """Index of the cls token in a prompted sequence built from ``num_patches`` patches."""
        return num_patches // 2 + self.before_cls()

    def forward(self, tokens: Tensor, cls_index: int) -> tuple[Tensor, int]:
        """Embedded tokens (B, M + 1, D), cls index -> (B, M + 1 + P, D), shifted cls index."""
        return self.insert(tokens, cls_index)


class DeepPrompts(PromptTokens):
    """A ``Block.residual_hook`` of VPT-deep: swaps the prompt tokens for this block's own."""

    def forward(self, residual: Tensor, cls_index: int) -> Tensor:
        """Residual stream (B, T, D) with prompts -> same shape, prompt positions replaced."""
        tokens, plain_index = self.remove(residual, cls_index)
        return self.insert(tokens, plain_index)[0]


class VPTShallow(Method):
    """Prompt tokens inserted once, after the position embedding; trains them and the head."""

    name = "vpt-shallow"
    options_type = VPTOptions
    slots = frozenset({"embed_hook"})
    deep: ClassVar[bool] = False

    def insert(self, model: VisionMamba) -> None:
        if model.embed_hook is not None or (self.deep and any(b.residual_hook is not None for b in model.layers)):
            raise RuntimeError(f"{self.name}: the model already has an embed or residual hook attached")
        conv = model.patch_embed.proj
        patch_pixels = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]

        def prompts(kind: type[PromptTokens]) -> PromptTokens:
            made = kind(self.options.num_tokens, model.embed_dim, self.options.position, patch_pixels)
            return place_like(made, model)

        model.embed_hook = prompts(EmbedPrompts)
        if self.deep:
            for block in model.layers[1:]:
                block.residual_hook = prompts(DeepPrompts)

    def trained_names(self, model: VisionMamba) -> set[str]:
        return param_names(model, lambda n: n.startswith("embed_hook.") or ".residual_hook." in n)


class VPTDeep(VPTShallow):
    """Prompt tokens for every block: inserted before block 0, replaced before each later block."""

    name = "vpt-deep"
    slots = frozenset({"embed_hook", "residual_hook"})
    deep = True
