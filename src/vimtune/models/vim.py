"""VisionMamba (Vim): patch embedding, middle cls token, position embedding, BiMamba blocks, head.

Follows SPEC-VIM sections 2-4 with the release's parameter names (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``layers.{i}.mixer.*``, ``layers.{i}.norm``, ``norm_f``, ``head``),
and timm's model API (``forward_features`` / ``forward_head`` / ``reset_classifier``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from typing import Protocol

import torch
from timm.layers import DropPath, lecun_normal_, trunc_normal_
from timm.models import checkpoint
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from vimtune.models.mamba import Block, RMSNorm
from vimtune.models.pos_embed import resize_pos_embed


class PatchEmbed(nn.Module):
    """Conv patch embedding (kernel ``patch_size``, step ``stride``). (B, C, H, W) -> (B, M, D)."""

    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size, self.stride = patch_size, stride
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (rows, cols) of an image of ``height`` x ``width`` pixels."""
        if height < self.patch_size or width < self.patch_size:
            raise ValueError(f"image {height}x{width} is smaller than one patch ({self.patch_size} px)")
        return (height - self.patch_size) // self.stride + 1, (width - self.patch_size) // self.stride + 1

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TokenEmbedHook(Protocol):
    """What a method may plug into ``VisionMamba.embed_hook`` (e.g. VPT prompt tokens)."""

    num_extra_tokens: int

    def __call__(self, tokens: Tensor, cls_index: int) -> tuple[Tensor, int]: ...

    def cls_index(self, num_patches: int) -> int: ...

    def remove(self, tokens: Tensor, cls_index: int) -> tuple[Tensor, int]:
        """Inverse of ``__call__``: (B, T, D) -> (B, T - num_extra_tokens, D) and the cls index without them."""
        ...


class VisionMamba(nn.Module):
    """Vision Mamba with a middle cls token and absolute position embedding.

    Args:
        img_size: default input side (pixels) that sizes ``pos_embed``; other sizes are
            handled by resizing ``pos_embed`` on the fly.
        patch_size, stride: patch embedding kernel and step (stride 8 for the "+" models).
        depth, embed_dim, d_state, expand, d_conv: Mamba stack shape.
        num_classes: head outputs (0: no head, ``forward`` returns features).
        drop_rate: dropout after the position embedding. drop_path_rate: stochastic depth.
        norm_eps: RMSNorm epsilon. scan_backend: selective-scan backend (None: automatic).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        stride: int | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 24,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-5,
        global_pool: str = "token",
        scan_backend: str | None = None,
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        stride = stride or patch_size
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size = img_size
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.depth = depth
        self.patch_embed = PatchEmbed(patch_size, stride, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size(*img_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = [0.0] + [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linspace
        self.layers = nn.ModuleList(
            Block(embed_dim, drop_path=rates[i], norm_eps=norm_eps, d_state=d_state, expand=expand,
                  d_conv=d_conv, scan_backend=scan_backend)
            for i in range(depth)
        )
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm_f = RMSNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.embed_hook: TokenEmbedHook | None = None
        self.grad_checkpointing = False
        self.feature_info = [
            dict(module=f"layers.{i}", num_chs=embed_dim, reduction=stride) for i in range(depth)
        ]
        self.init_weights()

    # ----------------------------------------------------------------- init
    @torch.no_grad()
    def init_weights(self) -> None:
        """SPEC-VIM section 4 initialisation (for training from scratch)."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        for module in self.layers.modules():
            is_linear = isinstance(module, nn.Linear) and module.bias is not None
            if is_linear and not getattr(module.bias, "_no_reinit", False):
                nn.init.zeros_(module.bias)
        for layer in self.layers:
            out_proj = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(out_proj, a=math.sqrt(5))
            out_proj.div_(math.sqrt(self.depth))
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of parameters that take no weight decay (besides 1-D params and biases)."""
        return {"pos_embed", "cls_token"}

    # ----------------------------------------------------------------- timm API
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh ``Linear(embed_dim, num_classes)`` (Identity for 0)."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        """Parameter groups for timm's layer-wise lr decay: the embedding, one group per block, the final norm."""
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=r"^layers\.(\d+)" if coarse else [(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's norm + mixer in the backward pass instead of keeping its activations."""
        self.grad_checkpointing = enable

    def load_pretrained(self, path: str) -> None:
        """Load a weights file (release ``.pth``, state dict, ``.safetensors``): timm's ``pretrained=True`` calls it."""
        from vimtune.models.checkpoint import load_checkpoint  # the checkpoint module builds on this one

        load_checkpoint(self, path, strict=True)

    # ----------------------------------------------------------------- forward
    def cls_index(self, num_patches: int) -> int:
        """Index of the cls token in a sequence built from ``num_patches`` patches."""
        if self.embed_hook is not None:
            return self.embed_hook.cls_index(num_patches)
        return num_patches // 2

    def _pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """(1, M + 1, D) position embedding for ``grid``, resized from the stored one if needed."""
        if tuple(grid) == tuple(self.grid_size):
            return self.pos_embed
        return resize_pos_embed(self.pos_embed, grid, old_grid=self.grid_size)

    def embed(self, x: Tensor) -> tuple[Tensor, int]:
        """Images (B, C, H, W) -> tokens (B, T, D) with cls inserted and ``pos_embed`` added, cls index."""
        grid = self.patch_embed.grid_size(x.shape[-2], x.shape[-1])
        tokens = self.patch_embed(x)
        mid = tokens.shape[1] // 2
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([tokens[:, :mid], cls, tokens[:, mid:]], dim=1)
        tokens = self.pos_drop(tokens + self._pos_embed_for(grid))
        if self.embed_hook is not None:
            return self.embed_hook(tokens, mid)
        return tokens, mid

    def forward_blocks(self, tokens: Tensor, cls_index: int) -> Tensor:
        """Embedded tokens (B, T, D) -> normalised tokens after all blocks (B, T, D), in the norm's dtype."""
        return self._run_blocks([tokens], cls_index)

    def _run_blocks(self, handed_over: list[Tensor], cls_index: int) -> Tensor:
        """:meth:`forward_blocks` on the tokens in the one-element list ``handed_over``, which it empties."""
        last = deque(self._residual_stream(handed_over, cls_index, len(self.layers)), maxlen=1)
        return self._final_norm(last.pop())

    def _final_norm(self, residual: Tensor) -> Tensor:
        """The final norm of the residual stream (B, T, D), in the norm's dtype (kept when pruned away)."""
        weight = getattr(self.norm_f, "weight", residual)
        return self.norm_f(residual).to(weight.dtype)

    def _mix(self, layer: nn.Module, residual: Tensor) -> Tensor:
        """``layer.mix(residual)``, recomputed in the backward pass when grad checkpointing is on."""
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(layer.mix, residual)
        return layer.mix(residual)

    def _residual_stream(self, handed_over: list[Tensor], cls_index: int, num_blocks: int) -> Iterator[Tensor]:
        """Yield the residual stream (B, T, D) after each of the first ``num_blocks`` blocks.

        After block i it is what block i + 1's norm reads (the final norm's input after the last
        block): block i's mixer output added (with its drop path and block i + 1's hooks) to the
        stream. ``handed_over`` is a one-element list of embedded tokens that this empties, so that
        while a mixer runs the loop holds only the residual stream (a lower inference peak when
        the caller kept no reference to the tokens).
        """
        residual = self.layers[0].add_residual(handed_over.pop(), None, cls_index)
        for i in range(num_blocks):
            hidden = self._mix(self.layers[i], residual)
            if i + 1 < len(self.layers):
                residual = self.layers[i + 1].add_residual(hidden, residual, cls_index)
            else:
                residual = residual + self.drop_path(hidden).to(residual.dtype)
            del hidden  # now in the residual stream
            yield residual

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> all output tokens (B, T, D), the cls token at ``cls_index(M)``."""
        tokens, cls_index = self.embed(x)
        handed_over = [tokens]
        del tokens  # freed once the residual stream has moved past them
        return self._run_blocks(handed_over, cls_index)

    def split_cls(self, tokens: Tensor, cls_index: int) -> tuple[Tensor, Tensor]:
        """Tokens (B, T, D) -> patch tokens (B, M, D) in grid order and the cls token (B, 1, D).

        Extra tokens an ``embed_hook`` inserted (e.g. VPT prompts) are taken out with it.
        """
        if self.embed_hook is not None:
            tokens, cls_index = self.embed_hook.remove(tokens, cls_index)
        patches = torch.cat([tokens[:, :cls_index], tokens[:, cls_index + 1:]], dim=1)
        return patches, tokens[:, cls_index:cls_index + 1]

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The residual stream after chosen blocks, as patch-grid feature maps (timm's ViT semantics).

        Args:
            x: images (B, C, H, W), any size of at least one patch.
            indices: blocks to return: the last n for an int, all for None, else a list (negative
                counts from the end).
            return_prefix_tokens: return (features, cls token (B, 1, D)) pairs.
            norm: apply the final norm to each (so the last block with ``norm=True`` gives the
                patch tokens of :meth:`forward_features`).
            stop_early: run no block past the last one asked for.
            output_fmt: ``"NCHW"`` for (B, D, rows, cols) maps, ``"NLC"`` for (B, rows * cols, D).
            intermediates_only: return only the list of intermediates.

        Returns:
            The intermediates, or (all output tokens (B, T, D) as :meth:`forward_features` gives
            them, the intermediates).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.layers), indices)
        grid = self.patch_embed.grid_size(x.shape[-2], x.shape[-1])
        tokens, cls_index = self.embed(x)
        handed_over = [tokens]
        del tokens
        num_blocks = max_index + 1 if stop_early or intermediates_only else len(self.layers)
        intermediates, prefixes = [], []
        for i, residual in enumerate(self._residual_stream(handed_over, cls_index, num_blocks)):
            if i in take:
                patches, cls = self.split_cls(self._final_norm(residual) if norm else residual, cls_index)
                if output_fmt == "NCHW":
                    patches = patches.reshape(patches.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous()
                intermediates.append(patches)
                prefixes.append(cls)
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefixes, strict=True))
        if intermediates_only:
            return intermediates
        return self._final_norm(residual), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False, prune_head: bool = True,
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the final norm / head); returns the kept indices."""
        take, max_index = feature_take_indices(len(self.layers), indices)
        if max_index + 1 < len(self.layers):
            self.drop_path = self.layers[max_index + 1].drop_path  # the drop path the last kept output had
        self.layers = self.layers[: max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def pool(self, tokens: Tensor) -> Tensor:
        """(B, T, D) -> (B, D): the cls token (``global_pool='token'``) or the mean of all tokens."""
        if self.global_pool == "avg":
            return tokens.mean(dim=1)
        extra = self.embed_hook.num_extra_tokens if self.embed_hook is not None else 0
        return tokens[:, self.cls_index(tokens.shape[1] - 1 - extra)]

    def forward_head(self, tokens: Tensor, pre_logits: bool = False) -> Tensor:
        """All tokens (B, T, D) -> logits (B, classes), or pooled features (B, D) if ``pre_logits``."""
        features = self.pool(tokens)
        return features if pre_logits else self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))
