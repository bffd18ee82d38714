"""Guards around timm's image augmentations: no impossible posterize, and failures that name the image.

timm's ``PosterizeIncreasing`` maps magnitude 10 to "keep 0 bits" (and ``Posterize`` maps magnitudes
below 2.5 to 0 bits); with ``mstd0.5`` noise around ``m9`` the DeiT RandAugment draws magnitude 10 in
about 2% of the posterize calls, and Pillow >= 13 refuses ``ImageOps.posterize(img, 0)``.
:func:`keep_posterize_bits` makes every posterize op of a transform keep at least one bit: the
strongest posterize left is one bit per channel (Pillow < 13 turned 0 bits into a black image). All
other ops, and the magnitude distribution, are those of the timm config string. (timm's own knob,
``mmax``, takes integers only: ``mmax9`` would clip the magnitude of every op at 9, i.e. half of all
draws around ``m9``, which changes the recipe far more.)
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import Any

from timm.data.auto_augment import AugmentOp

from .errors import AugmentationError

__all__ = ["apply_transform", "keep_posterize_bits"]

#: Attributes under which timm / torchvision containers keep their child transforms.
_CHILD_ATTRS = ("transforms", "ops", "policy")


class _AtLeastOneBit:
    """A posterize ``level_fn`` whose bit count is raised to at least 1 (picklable for workers)."""

    def __init__(self, level_fn: Callable[..., tuple[int, ...]]) -> None:
        self.level_fn = level_fn

    def __call__(self, level: float, hparams: dict[str, Any]) -> tuple[int]:
        (bits,) = self.level_fn(level, hparams)
        return (max(1, int(bits)),)


def _augment_ops(transform: Any) -> Iterator[AugmentOp]:
    """Every timm ``AugmentOp`` inside ``transform`` (Compose, RandAugment, AutoAugment, AugMix)."""
    if isinstance(transform, AugmentOp):
        yield transform
        return
    if isinstance(transform, (list, tuple)):
        for child in transform:
            yield from _augment_ops(child)
        return
    for attr in _CHILD_ATTRS:
        children = getattr(transform, attr, None)
        if isinstance(children, (list, tuple)):
            yield from _augment_ops(children)


def keep_posterize_bits(transform: Any) -> Any:
    """Make every posterize op inside ``transform`` keep 1..8 bits; returns ``transform`` (changed in place)."""
    for op in _augment_ops(transform):
        if op.name.startswith("Posterize") and not isinstance(op.level_fn, _AtLeastOneBit):
            op.level_fn = _AtLeastOneBit(op.level_fn)
    return transform


def _failing_steps(tb: types.TracebackType | None) -> list[str]:
    """Names of the transform objects whose ``__call__`` was running when the error was raised."""
    steps: list[str] = []
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if owner is not None and frame.f_code.co_name in ("__call__", "forward"):
            name = getattr(owner, "name", None)
            steps.append(name if isinstance(name, str) else type(owner).__name__)
        tb = tb.tb_next
    return [s for s in steps if s != "Compose"] or ["transform"]


def apply_transform(transform: Callable[[Any], Any], img: Any, where: str) -> Any:
    """``transform(img)``; an error inside it becomes :class:`AugmentationError` naming ``where`` and the step.

    Args:
        transform: the per-image transform.
        img: a PIL image.
        where: the image, as the message should name it (``'/data/x.png' (label 3)``).
    """
    try:
        return transform(img)
    except Exception as err:  # any library error: re-raised with the image and the failing step named
        steps = " > ".join(_failing_steps(err.__traceback__))
        raise AugmentationError(
            f"augmentation failed on image {where} in {steps}: {type(err).__name__}: {err}"
        ) from err
