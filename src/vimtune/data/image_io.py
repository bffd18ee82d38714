"""Loading image files as RGB PIL images, with errors that name the file."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .errors import BadImageError

__all__ = ["IMG_EXTENSIONS", "check_image", "load_rgb", "to_rgb"]

#: File endings (lower case) that are treated as images when scanning folders.
IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif",
)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_rgb(img: Image.Image) -> Image.Image:
    """Return ``img`` as a 3-channel 8-bit RGB image.

    Grayscale (``L``, ``1``, ``LA``), paletted (``P``, with or without transparency), ``RGBA``,
    ``CMYK`` and ``YCbCr`` go through PIL's conversion; an alpha channel is dropped (as
    torchvision's loader does). 16-bit / 32-bit grayscale is rescaled to 0..255 first rather than
    clipped, so that 16-bit PNGs do not come out white.
    """
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's warning about palette transparency
    elif img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        if img.mode == "F" and top <= 1.0:
            arr = arr * 255.0
        elif top > 255.0:
            arr = arr / 257.0  # 16-bit range 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike[str], label: int | None = None) -> Image.Image:
    """Open, fully decode and convert one image file to RGB.

    Args:
        path: image file.
        label: the sample's label, only used in the error message.

    Raises:
        BadImageError: the file is missing, not an image, truncated or otherwise undecodable;
            the message names the file and the label.
    """
    try:
        with Image.open(path) as img:
            img.load()  # Image.open is lazy: decode now so truncated files fail here
            out = to_rgb(img)
            if out is img:
                out = img.copy()  # detach from the file handle closed by the with-block
        return out
    except BadImageError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, zlib/struct errors...
        raise BadImageError(os.fspath(path), label, f"{type(exc).__name__}: {exc}") from exc


def check_image(path: str | os.PathLike[str]) -> str | None:
    """Return ``None`` when ``path`` decodes as an image, else a short reason string."""
    try:
        with Image.open(path) as img:
            img.load()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
