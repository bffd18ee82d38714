"""Image transforms and batch-level mixing, built on timm's ``create_transform`` and ``Mixup``.

Named recipes (:data:`RECIPES`) fill in the fields of :class:`AugmentConfig` that are left as
``None``:

* ``deit`` -- DeiT recipe: RandomResizedCrop (bicubic) + horizontal flip, RandAugment
  ``rand-m9-mstd0.5-inc1`` (its posterize keeps at least 1 bit, which Pillow 13 requires),
  random erasing 0.25 (per-pixel noise), mixup 0.8 / cutmix 1.0
  (batch level), label smoothing 0.1.
* ``svp`` -- the Selective Visual Prompting fine-tuning recipe; the same augmentation settings
  as ``deit`` (RandAugment m9, reprob 0.25, mixup 0.8 / cutmix 1.0, smoothing 0.1), kept under
  its own name so that either can be changed without touching the other.
* ``none`` -- no augmentation (the VTAB-1k protocol): resize straight to ``img_size x img_size``
  (no crop, no flip) and normalise, for training and for evaluation alike; no mixing, no
  smoothing.

Evaluation (recipes other than ``none``): resize the short side to ``img_size / eval_crop_pct``
(bicubic) and center-crop ``img_size``; images whose short side is at most
``small_image_size`` pixels (e.g. 32 px CIFAR) get a plain resize to ``img_size x img_size``
instead, so that nothing of a tiny image is cropped away. ``eval_resize`` forces one of the two.

Mixup / CutMix act on whole batches, so they are not part of the per-image transform:
:func:`build_mixup` returns a :class:`timm.data.Mixup` (or ``None``) to apply to
``(images, labels)`` batches in the training loop. It needs an even batch size (the train
loader drops the last incomplete batch). With a Mixup object use a soft-target cross-entropy;
without one, label smoothing is ``cfg.smoothing`` in the loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform

from .safe_augment import keep_posterize_bits

__all__ = [
    "RECIPES",
    "AugmentConfig",
    "SizeAdaptiveTransform",
    "build_eval_transform",
    "build_mixup",
    "build_train_transform",
]

RANDAUG_M9 = "rand-m9-mstd0.5-inc1"

#: Recipe name -> values for the :class:`AugmentConfig` fields left as ``None``.
RECIPES: dict[str, dict[str, Any]] = {
    "deit": {
        "auto_augment": RANDAUG_M9, "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0,
        "smoothing": 0.1, "hflip": 0.5,
    },
    "svp": {
        "auto_augment": RANDAUG_M9, "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0,
        "smoothing": 0.1, "hflip": 0.5,
    },
    "none": {
        "auto_augment": "", "reprob": 0.0, "mixup": 0.0, "cutmix": 0.0,
        "smoothing": 0.0, "hflip": 0.0,
    },
}

_EVAL_RESIZE_MODES = ("auto", "crop", "resize")


@dataclass
class AugmentConfig:
    """Augmentation settings. Fields left as ``None`` take the value of ``recipe``.

    Attributes:
        recipe: ``deit``, ``svp`` or ``none`` (see the module docstring).
        img_size: square output size in pixels.
        auto_augment: timm auto-augment string (``rand-m9-mstd0.5-inc1``); ``""`` or ``"none"``
            switches it off.
        reprob: random-erasing probability.
        remode: random-erasing fill (``pixel``: per-pixel normal noise, as in DeiT; ``const``;
            ``rand``).
        recount: random-erasing regions per image.
        mixup: mixup alpha (0 = off).
        cutmix: cutmix alpha (0 = off).
        cutmix_minmax: cutmix box-ratio bounds (overrides ``cutmix`` alpha when set).
        mixup_prob: probability of mixing a batch at all.
        mixup_switch_prob: probability of cutmix rather than mixup when both are on.
        mixup_mode: ``batch``, ``pair`` or ``elem`` (timm ``Mixup`` modes).
        smoothing: label smoothing, applied in the Mixup targets (or in the loss without Mixup).
        hflip: horizontal-flip probability (training).
        color_jitter: colour-jitter strength; timm disables it when RandAugment is on.
        scale: RandomResizedCrop area range; ``None`` = timm's ``(0.08, 1.0)``.
        ratio: RandomResizedCrop aspect range; ``None`` = timm's ``(3/4, 4/3)``.
        interpolation: resize interpolation (``bicubic``, ``bilinear``, ``random``...).
        mean: normalisation mean (RGB, 0..1 scale).
        std: normalisation std.
        eval_crop_pct: evaluation center-crop fraction (short side resized to
            ``img_size / eval_crop_pct``).
        eval_resize: ``auto`` (see module docstring), ``crop`` or ``resize`` (plain resize).
        small_image_size: in ``auto`` mode, images with short side ``<=`` this get a plain resize.
    """

    recipe: str = "deit"
    img_size: int = 224
    auto_augment: str | None = None
    reprob: float | None = None
    remode: str = "pixel"
    recount: int = 1
    mixup: float | None = None
    cutmix: float | None = None
    cutmix_minmax: tuple[float, float] | None = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float | None = None
    hflip: float | None = None
    color_jitter: float = 0.4
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] | None = None
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN)
    std: tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD)
    eval_crop_pct: float = 0.875
    eval_resize: str = "auto"
    small_image_size: int = 64

    def resolved(self) -> AugmentConfig:
        """A copy with every ``None`` recipe field filled from :data:`RECIPES`, validated.

        Raises:
            ValueError: unknown recipe or eval_resize mode, or an out-of-range value.
        """
        if self.recipe not in RECIPES:
            raise ValueError(
                f"unknown augmentation recipe {self.recipe!r}; expected one of {sorted(RECIPES)}"
            )
        if self.eval_resize not in _EVAL_RESIZE_MODES:
            raise ValueError(f"eval_resize must be one of {_EVAL_RESIZE_MODES}, got {self.eval_resize!r}")
        fill = {k: v for k, v in RECIPES[self.recipe].items() if getattr(self, k) is None}
        cfg = dataclasses.replace(self, **fill)
        if cfg.auto_augment is not None and cfg.auto_augment.lower() == "none":
            cfg.auto_augment = ""
        if cfg.img_size <= 0:
            raise ValueError(f"img_size must be positive, got {cfg.img_size}")
        if not 0.0 < cfg.eval_crop_pct <= 1.0:
            raise ValueError(f"eval_crop_pct must be in (0, 1], got {cfg.eval_crop_pct}")
        for name in ("reprob", "hflip", "smoothing", "mixup_prob", "mixup_switch_prob"):
            value = getattr(cfg, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if cfg.mixup < 0 or cfg.cutmix < 0:
            raise ValueError(f"mixup/cutmix alphas must be >= 0, got {cfg.mixup}/{cfg.cutmix}")
        if len(cfg.mean) != 3 or len(cfg.std) != 3:
            raise ValueError("mean and std need 3 values (images are RGB)")
        return cfg


class SizeAdaptiveTransform:
    """Apply ``small`` to images whose short side is ``<= threshold`` pixels, ``large`` otherwise."""

    def __init__(self, small: Callable[[Any], Any], large: Callable[[Any], Any], threshold: int) -> None:
        self.small = small
        self.large = large
        self.threshold = threshold

    def __call__(self, img: Any) -> Any:
        width, height = img.size
        return self.small(img) if min(width, height) <= self.threshold else self.large(img)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(threshold={self.threshold},\n small={self.small!r},\n"
                f" large={self.large!r})")


def _plain_resize(cfg: AugmentConfig) -> Callable[[Any], Any]:
    """Resize to ``img_size x img_size`` (aspect not kept, nothing cropped), to tensor, normalise."""
    return create_transform(
        cfg.img_size, is_training=False, crop_pct=1.0, crop_mode="squash",
        interpolation=_no_random(cfg.interpolation), mean=cfg.mean, std=cfg.std,
    )


def _center_crop(cfg: AugmentConfig) -> Callable[[Any], Any]:
    """Short side to ``img_size / eval_crop_pct``, center crop ``img_size``, to tensor, normalise."""
    return create_transform(
        cfg.img_size, is_training=False, crop_pct=cfg.eval_crop_pct, crop_mode="center",
        interpolation=_no_random(cfg.interpolation), mean=cfg.mean, std=cfg.std,
    )


def _no_random(interpolation: str) -> str:
    return "bicubic" if interpolation == "random" else interpolation


def build_train_transform(cfg: AugmentConfig) -> Callable[[Any], Any]:
    """Per-image training transform (PIL RGB image -> normalised ``3 x img_size x img_size`` tensor).

    Recipe ``none`` is a plain resize + normalise; the others use timm's ImageNet training
    pipeline (RandomResizedCrop with ``cfg.scale``/``cfg.ratio``, flip, auto-augment, random
    erasing). Mixup/CutMix are not included: see :func:`build_mixup`. Posterize ops keep at least
    one bit (see :mod:`vimtune.data.safe_augment`).
    """
    cfg = cfg.resolved()
    if cfg.recipe == "none":
        return _plain_resize(cfg)
    return keep_posterize_bits(create_transform(
        cfg.img_size,
        is_training=True,
        scale=cfg.scale,
        ratio=cfg.ratio,
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        auto_augment=cfg.auto_augment or None,
        interpolation=cfg.interpolation,
        mean=cfg.mean,
        std=cfg.std,
        re_prob=cfg.reprob,
        re_mode=cfg.remode,
        re_count=cfg.recount,
    ))


def build_eval_transform(cfg: AugmentConfig) -> Callable[[Any], Any]:
    """Evaluation transform (deterministic), see the module docstring for the resize rule."""
    cfg = cfg.resolved()
    mode = cfg.eval_resize
    if mode == "auto" and cfg.recipe == "none":
        mode = "resize"  # VTAB protocol: evaluate exactly as trained, a direct resize
    if mode == "resize":
        return _plain_resize(cfg)
    if mode == "crop":
        return _center_crop(cfg)
    return SizeAdaptiveTransform(_plain_resize(cfg), _center_crop(cfg), cfg.small_image_size)


def build_mixup(cfg: AugmentConfig, num_classes: int) -> Mixup | None:
    """timm ``Mixup`` for the batch-level mixup/cutmix of ``cfg``, or ``None`` when both are off.

    The returned object is called as ``images, soft_targets = mixup(images, labels)`` and folds
    ``cfg.smoothing`` into the soft targets.
    """
    cfg = cfg.resolved()
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if cfg.mixup <= 0 and cfg.cutmix <= 0 and cfg.cutmix_minmax is None:
        return None
    return Mixup(
        mixup_alpha=cfg.mixup,
        cutmix_alpha=cfg.cutmix,
        cutmix_minmax=cfg.cutmix_minmax,
        prob=cfg.mixup_prob,
        switch_prob=cfg.mixup_switch_prob,
        mode=cfg.mixup_mode,
        label_smoothing=cfg.smoothing,
        num_classes=num_classes,
    )
