"""What a Vim forward pass does inside its selective scans, collected with forward hooks (no copy of the mixer).

:func:`collect` runs a model on a batch of images and returns, per layer: the step size ``delta`` of each
direction (the gate: how strongly a token overwrites the scan state) averaged over channels, the cls token's row
of the hidden attention (both directions combined as the mixer combines them), optionally the whole
channel-averaged hidden-attention map, and the magnitude of the token-wise prompt ``|prompt(t) - t|`` of methods
that use ``Block.prompter`` (SVP).

The hooks sit on each mixer's ``x_proj`` / ``x_proj_b`` (their input is the scan input ``u``, their output holds
``dt``, ``B``, ``C``) and on each ``Block.prompter``. While collecting, a mixer that would take the CPU's fused
time-major path (which runs the backward direction in original order and in pieces) is switched to the generic
path with the ``chunked`` scan, whose backward direction scans the time-flipped sequence in one call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vimtune.models.mamba import BiMambaMixer
from vimtune.models.vim import VisionMamba
from vimtune.ops import resolve_backend
from vimtune.ops.cpu_linear import linear
from vimtune.viz.hidden_attention import hidden_attention, hidden_attention_row


@dataclass(frozen=True)
class TokenLayout:
    """Where the patches, the cls token and any prompt tokens sit in a model's token sequence.

    Attributes:
        grid: patch grid (rows, cols).
        length: T, tokens in the sequence.
        cls_index: position of the cls token.
        patch_index: (M,) positions of the patches, in row-major grid order (increasing: the sequence keeps it).
        prompt_index: (P,) positions of prompt tokens (VPT), empty without.
    """

    grid: tuple[int, int]
    length: int
    cls_index: int
    patch_index: Tensor
    prompt_index: Tensor

    def patches(self, values: Tensor) -> Tensor:
        """(..., T) per-token values -> (..., M) of the patches in grid order."""
        return values[..., self.patch_index.to(values.device)]

    def to_grid(self, values: Tensor) -> Tensor:
        """(..., T) per-token values -> (..., rows, cols) over the patch grid."""
        return self.patches(values).unflatten(-1, self.grid)


def token_layout(model: VisionMamba, height: int, width: int) -> TokenLayout:
    """The :class:`TokenLayout` of ``model`` for images of ``height`` x ``width`` pixels.

    Raises:
        ValueError: the model's ``embed_hook`` adds tokens but cannot say where (it has no ``remove``).
    """
    grid = model.patch_embed.grid_size(height, width)
    patches = grid[0] * grid[1]
    cls_index = model.cls_index(patches)
    hook = model.embed_hook
    extra = hook.num_extra_tokens if hook is not None else 0
    length = patches + 1 + extra
    positions = torch.arange(length).view(1, length, 1)
    if extra:
        if not hasattr(hook, "remove"):
            raise ValueError(f"cannot locate the {extra} tokens that {type(hook).__name__} adds: it has no remove()")
        kept, plain_cls = hook.remove(positions, cls_index)
    else:
        kept, plain_cls = positions, cls_index
    kept = kept.view(-1)
    prompt_mask = torch.ones(length, dtype=torch.bool)
    prompt_mask[kept] = False
    patch_index = torch.cat([kept[:plain_cls], kept[plain_cls + 1:]])
    return TokenLayout(grid, length, cls_index, patch_index, prompt_mask.nonzero().view(-1))


@dataclass
class Collected:
    """What :func:`collect` gathered for a batch of B images through a model of L layers.

    Attributes:
        layout: the token layout of the batch.
        logits: (B, classes) the model's output.
        gate: (L, B, 2, T) ``softplus(dt + bias)`` averaged over channels, per direction (0 forward, 1 backward),
            both in original token order.
        cls_attention: (L, B, T) the cls token's hidden-attention row, averaged over channels, the two directions
            combined as the mixer combines their outputs (their mean), in original token order.
        attention: (L, B, T, T) the whole channel-averaged hidden-attention map, combined likewise (only when asked).
        prompt_magnitude: (L, B, T) L2 norm over channels of ``prompter(h) - h`` (only for models with prompters).
        token_norm: (L, B, T) L2 norm over channels of the prompter's input ``h`` (with ``prompt_magnitude``).
    """

    layout: TokenLayout
    logits: Tensor
    gate: Tensor
    cls_attention: Tensor
    attention: Tensor | None = None
    prompt_magnitude: Tensor | None = None
    token_norm: Tensor | None = None


class _LayerRecorder:
    """The hooks of one block: what its two scans and its prompter produce, in original token order."""

    def __init__(self, mixer: BiMambaMixer, cls_index: int, full_map: bool) -> None:
        self.mixer, self.cls_index, self.full_map = mixer, cls_index, full_map
        self.gate: list[Tensor | None] = [None, None]
        self.cls_row: list[Tensor | None] = [None, None]
        self.attention: list[Tensor | None] = [None, None]
        self.prompt: tuple[Tensor, Tensor] | None = None

    def scan_hook(self, direction: int):  # noqa: ANN201 - a forward-hook closure
        dt_proj = (self.mixer.dt_proj, self.mixer.dt_proj_b)[direction]
        A_log = (self.mixer.A_log, self.mixer.A_b_log)[direction]
        mixer = self.mixer

        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            u = args[0].transpose(1, 2)  # (B, E, T) in scan order
            dt, B, C = output.split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
            delta = linear(dt, dt_proj.weight).transpose(1, 2)
            A = -torch.exp(A_log.to(torch.promote_types(A_log.dtype, torch.float32)))
            scan = (u, delta, A, B.transpose(1, 2), C.transpose(1, 2))
            length = u.shape[-1]
            in_order = (lambda t: t) if direction == 0 else (lambda t: t.flip(-1))
            gate = F.softplus(delta.float() + dt_proj.bias.float()[:, None], threshold=20.0).mean(1)
            self.gate[direction] = in_order(gate)
            row = self.cls_index if direction == 0 else length - 1 - self.cls_index
            cls_row = hidden_attention_row(*scan, row, delta_bias=dt_proj.bias, delta_softplus=True).mean(1)
            self.cls_row[direction] = in_order(cls_row)
            if self.full_map:
                full = hidden_attention(*scan, delta_bias=dt_proj.bias, delta_softplus=True, channel_mean=True)
                self.attention[direction] = full if direction == 0 else full.flip(-1, -2)

        return hook

    def prompt_hook(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        hidden = args[0].float()
        self.prompt = ((output.float() - hidden).norm(dim=-1), hidden.norm(dim=-1))


@contextlib.contextmanager
def _generic_mixer_path(model: VisionMamba, device: torch.device) -> Iterator[None]:
    """Mixers that would take the fused CPU path use the generic one with the ``chunked`` scan meanwhile."""
    saved = [(layer.mixer, layer.mixer.scan_backend) for layer in model.layers]
    try:
        for mixer, backend in saved:
            if resolve_backend(device, backend) == "cpu":
                mixer.scan_backend = "chunked"
        yield
    finally:
        for mixer, backend in saved:
            mixer.scan_backend = backend


@torch.no_grad()
def collect(model: VisionMamba, images: Tensor, full_maps: bool = False) -> Collected:
    """Run ``model`` (eval mode) on ``images`` (B, 3, H, W) and gather its gates, attention and prompts per layer.

    Args:
        model: a VisionMamba, with or without a method attached.
        images: normalised images on the model's device.
        full_maps: also gather the whole (T, T) hidden-attention map of every layer (costs O(E N T^2) per layer).

    Returns:
        :class:`Collected`; see there for the shapes.
    """
    if not isinstance(model, VisionMamba):
        raise TypeError(f"collect needs a vimtune VisionMamba, got {type(model).__name__}")
    layout = token_layout(model, images.shape[-2], images.shape[-1])
    recorders = [_LayerRecorder(layer.mixer, layout.cls_index, full_maps) for layer in model.layers]
    handles = []
    try:
        for layer, recorder in zip(model.layers, recorders, strict=True):
            handles.append(layer.mixer.x_proj.register_forward_hook(recorder.scan_hook(0)))
            handles.append(layer.mixer.x_proj_b.register_forward_hook(recorder.scan_hook(1)))
            if layer.prompter is not None:
                handles.append(layer.prompter.register_forward_hook(recorder.prompt_hook))
        was_training = model.training
        model.eval()
        with _generic_mixer_path(model, images.device):
            logits = model(images)
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    gate = torch.stack([torch.stack(r.gate, dim=1) for r in recorders])
    cls_attention = torch.stack([(r.cls_row[0] + r.cls_row[1]) / 2 for r in recorders])
    attention = torch.stack([(r.attention[0] + r.attention[1]) / 2 for r in recorders]) if full_maps else None
    prompts = [r.prompt for r in recorders]
    if any(p is None for p in prompts):
        return Collected(layout, logits, gate, cls_attention, attention)
    magnitude, token_norm = (torch.stack(parts) for parts in zip(*prompts, strict=True))
    return Collected(layout, logits, gate, cls_attention, attention, magnitude, token_norm)
