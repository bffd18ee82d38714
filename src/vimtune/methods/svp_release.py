"""Import checkpoints of the SVP authors' release (SPEC-SVP section 6) as a model with ``svp`` attached.

The release saves the whole model: backbone keys as in SPEC-VIM section 5, the head (``head.*``,
or ``head.0.*``/``head.1.*`` for its two-layer head) and the prompts, renamed here::

    prompt_scale                         (depth, D) -> svp.beta
    prompt_shared_scale                  (G, D)     -> svp.alpha
    prompt_generator.{l}.0.{weight,bias}            -> svp.inner.{l}.down.{weight,bias}
    prompt_generator.{l}.1.{weight,bias}            -> svp.inner.{l}.up.{weight,bias}
    prompt_generator_shared.{g}.0.{weight,bias}     -> svp.cross.{g}.{weight,bias}

The imported model uses the ``release`` variant, which reproduces the released code's numbers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import timm
from torch import Tensor

from vimtune.methods.artifacts import load_weights
from vimtune.methods.registry import build
from vimtune.methods.svp import SVP, num_groups
from vimtune.models.checkpoint import CheckpointError, read_state_dict
from vimtune.models.vim import VisionMamba

RELEASE_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^prompt_scale$"), "svp.beta"),
    (re.compile(r"^prompt_shared_scale$"), "svp.alpha"),
    (re.compile(r"^prompt_generator\.(\d+)\.0\."), r"svp.inner.\1.down."),
    (re.compile(r"^prompt_generator\.(\d+)\.1\."), r"svp.inner.\1.up."),
    (re.compile(r"^prompt_generator_shared\.(\d+)\.0\."), r"svp.cross.\1."),
)


def rename_release_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The release's prompt keys renamed to vimtune's ``svp.*`` names; other keys unchanged."""
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in RELEASE_RENAMES:
            key, count = pattern.subn(replacement, key)
            if count:
                break
        renamed[key] = value
    return renamed


def release_group_size(depth: int, groups: int) -> int:
    """s of a release checkpoint with ``groups`` cross prompters on a ``depth``-layer backbone (depth // G)."""
    if not 0 < groups <= depth:
        raise CheckpointError(f"a checkpoint with {groups} cross-prompter groups cannot belong to a depth-{depth} "
                              "backbone; check --backbone")
    return depth // groups


def import_svp_release(
    checkpoint: str | os.PathLike | Mapping[str, Tensor],
    backbone: str = "vim_small_patch16_224",
    group_size: int | None = None,
    rank: int = 64,
    num_classes: int | None = None,
    simam: bool = False,
    backbone_kwargs: Mapping[str, Any] | None = None,
) -> tuple[VisionMamba, SVP]:
    """Build ``backbone`` with ``svp`` (``release`` variant) attached and the release's weights loaded.

    Args:
        checkpoint: path to a release ``.pth`` (read safely by :func:`vimtune.models.read_state_dict`)
            or its state dict.
        backbone: timm name of the backbone config; ``backbone_kwargs`` override its arguments.
        group_size, rank: s and r the checkpoint was trained with (checked against its shapes);
            ``group_size=None`` infers s from the checkpoint: depth // G, G its cross-prompter count.
        num_classes: classes of the head; None reads them from the checkpoint's head. A different
            count leaves the head freshly initialised.
        simam: apply SimAM to the input (the release's CIFAR/Flowers runs; not visible in a checkpoint).

    Returns:
        The model and its :class:`~vimtune.methods.svp.SVP` method (for :func:`save_adapter`).
    """
    source = f"'{checkpoint}'" if isinstance(checkpoint, (str, os.PathLike)) else "state dict"
    state = read_state_dict(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else dict(checkpoint)
    if "prompt_shared_scale" not in state or "prompt_generator.0.0.weight" not in state:
        raise CheckpointError(
            f"{source} is not an SVP release checkpoint: it lacks prompt_shared_scale / prompt_generator.0.0.weight"
        )
    two_layer = "head.0.weight" in state
    head_weight = state.get("head.1.weight" if two_layer else "head.weight")
    saved_classes = None if head_weight is None else head_weight.shape[0]
    classes = saved_classes if num_classes is None else num_classes
    if classes is None:
        raise CheckpointError(f"{source} has no head; pass num_classes")
    saved_rank = state["prompt_generator.0.0.weight"].shape[0]
    if saved_rank != rank:
        raise CheckpointError(f"{source} has inner prompters of rank {saved_rank}, not rank={rank}")

    model = timm.create_model(backbone, **{**(backbone_kwargs or {}), "num_classes": classes})
    depth, groups = len(model.layers), state["prompt_shared_scale"].shape[0]
    if group_size is None:
        group_size = release_group_size(depth, groups)
    if num_groups(depth, group_size) != groups:
        raise CheckpointError(
            f"{source} has {groups} cross-prompter groups, but group_size={group_size} gives "
            f"{num_groups(depth, group_size)} for depth {depth} (the release uses group_size = depth // groups)"
        )
    method = build("svp", rank=rank, group_size=group_size, variant="release",
                   head="two-layer" if two_layer else "linear", simam=simam)
    method.attach(model, classes)

    renamed = rename_release_keys(state)
    fresh_head: tuple[str, ...] = ()
    if classes != saved_classes:
        renamed = {k: v for k, v in renamed.items() if not k.startswith("head.")}
        fresh_head = tuple(k for k in model.state_dict() if k.startswith("head."))
    load_weights(model, renamed, allowed_missing=fresh_head)
    return model, method


def from_svp_release(
    checkpoint: str | os.PathLike | Mapping[str, Tensor],
    backbone: str = "vim_small_patch16_224",
    group_size: int | None = None,
    rank: int = 64,
    num_classes: int | None = None,
    **options: Any,
) -> VisionMamba:
    """The model of :func:`import_svp_release` (``options``: ``simam``, ``backbone_kwargs``)."""
    return import_svp_release(checkpoint, backbone, group_size, rank, num_classes, **options)[0]
