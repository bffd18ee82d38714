"""Classification heads set up by the methods: the model's Linear head or SVP's two-layer head."""

from __future__ import annotations

from timm.layers import trunc_normal_
from torch import nn

from vimtune.models.vim import VisionMamba

HEAD_KINDS = ("linear", "two-layer")


def two_layer_head(dim: int, num_classes: int) -> nn.Sequential:
    """``Linear(dim, dim // 2) -> Linear(dim // 2, num_classes)``, no activation; (B, dim) -> (B, C).

    The optional head of the SVP release (its state-dict names ``head.0.*``, ``head.1.*``).
    Weights trunc-normal (std 0.02), biases zero.
    """
    head = nn.Sequential(nn.Linear(dim, dim // 2), nn.Linear(dim // 2, num_classes))
    for linear in head:
        trunc_normal_(linear.weight, std=0.02)
        nn.init.zeros_(linear.bias)
    return head


def _head_fits(head: nn.Module, kind: str, dim: int, num_classes: int) -> bool:
    """Whether ``head`` already is a ``kind`` head mapping ``dim`` features to ``num_classes``."""
    if kind == "two-layer":
        return (isinstance(head, nn.Sequential) and len(head) == 2
                and all(isinstance(m, nn.Linear) for m in head)
                and head[0].in_features == dim and head[1].out_features == num_classes)
    if num_classes == 0:
        return isinstance(head, nn.Identity)
    return isinstance(head, nn.Linear) and head.in_features == dim and head.out_features == num_classes


def set_head(model: VisionMamba, num_classes: int | None, kind: str = "linear") -> None:
    """Give ``model`` a ``kind`` head for ``num_classes`` classes, keeping the present one if it fits.

    ``num_classes=None`` keeps the model's class count (and a fitting head, e.g. a pretrained
    one). A new head is placed on the device and dtype of ``model.pos_embed``.
    """
    if kind not in HEAD_KINDS:
        raise ValueError(f"head must be one of {HEAD_KINDS}, got {kind!r}")
    classes = model.num_classes if num_classes is None else num_classes
    if _head_fits(model.head, kind, model.embed_dim, classes):
        return
    if kind == "two-layer":
        if classes <= 0:
            raise ValueError(f"a two-layer head needs num_classes > 0, got {classes}")
        model.head = two_layer_head(model.embed_dim, classes)
        model.num_classes = classes
    else:
        model.reset_classifier(classes)
    model.head.to(device=model.pos_embed.device, dtype=model.pos_embed.dtype)
