"""The one pixel path every part shares: a decoded Pillow image -> upright, 8-bit RGB.

Ingest, query images, thumbnails and every embedder's input preparation go through these functions, so a 16-bit
PNG, a paletted GIF with transparency or a rotated phone photo look the same to every model and every front door.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps

# Padding and alpha-compositing colour: mid grey, which input normalisation maps to ~0 for most models.
NEUTRAL_RGB = (127, 127, 127)
_ORIENTATION = ExifTags.Base.Orientation
_LEVELS = np.arange(65536, dtype=np.uint32)
# 16-bit and wider frames are reduced to 8 bits this many bytes (at 4 a pixel) at a time: float32 copies of a
# whole 7000x7000 frame cost ~1 GB at peak (issue 19).
_STRIP_BYTES = 4 << 20


def upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phones store rotated pixels plus a tag). Broken EXIF leaves the image as is."""
    try:
        orientation = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF must not stop a photo from being used
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        try:
            return ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 - same: keep the pixels as stored
            return img
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Transparency is composited on NEUTRAL_RGB; 16-, 32-bit and float greyscale go
    through to_eight_bit first."""
    img = to_eight_bit(img)
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        canvas = Image.new("RGB", img.size, NEUTRAL_RGB)
        canvas.paste(img, mask=img.getchannel("A"))
        return canvas
    return img if img.mode == "RGB" else img.convert("RGB")


def to_eight_bit(img: Image.Image) -> Image.Image:
    """16-bit greyscale -> L scaled by the bit depth its pixels use (see _sixteen_to_l); 32-bit integer and float
    greyscale -> L by the range their pixels use (see _wide_to_l); any other mode is returned as it is.

    Both work in strips of rows, so the only full-size allocation is the 8-bit result. A caller holding the only
    reference to a wide frame should drop it (rebind) before making an RGB copy of the result: the 7000x7000 float
    frame alone is 196 MB, and the 8-bit path then peaks as an 8-bit file of that size does."""
    if img.mode.startswith("I;16"):
        return _sixteen_to_l(img)
    if img.mode in ("I", "F"):
        return _wide_to_l(img)
    return img


def _strips(img: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """The frame as numpy arrays of about _STRIP_BYTES (at 4 bytes a pixel) each: (top row, rows)."""
    width, height = img.size
    rows = max(1, _STRIP_BYTES // max(1, 4 * width))
    for top in range(0, height, rows):
        yield top, np.asarray(img.crop((0, top, width, min(height, top + rows))))


def _mapped_to_l(img: Image.Image, to_bytes: Callable[[np.ndarray], np.ndarray]) -> Image.Image:
    """An L image of img's size, filled strip by strip with to_bytes(strip) (uint8, the strip's shape)."""
    out = Image.new("L", img.size)
    for top, strip in _strips(img):
        out.paste(Image.fromarray(to_bytes(strip), "L"), (0, top))
    return out


def _sixteen_to_l(img: Image.Image) -> Image.Image:
    """16-bit greyscale -> L. 16-bit files often hold 10-, 12- or 14-bit data (scientific and medical images, some
    scanners), which 1/257 would turn nearly black: scale by the smallest bit depth that holds the brightest pixel
    (full 16-bit data: exactly 1/257). Done through a 65536-entry lookup table: one byte per output pixel, no
    float copy of the frame."""
    brightest = max((int(strip.max()) for _, strip in _strips(img) if strip.size), default=0)
    top = (1 << max(8, brightest.bit_length())) - 1
    table = np.minimum((_LEVELS * 255 + top // 2) // top, 255).astype(np.uint8)
    return _mapped_to_l(img, lambda strip: table[strip])


def _wide_to_l(img: Image.Image) -> Image.Image:
    """32-bit integer or float greyscale -> L. The mode does not fix the range, so use what the (finite) pixels
    span: 0..255 as is, 0..65535 as 16-bit, anything else stretched; NaN -> 0, +inf -> 255, -inf -> 0. float32
    arithmetic, one strip at a time (two passes: the range, then the mapping)."""
    lo, hi = math.inf, -math.inf
    for _, strip in _strips(img):
        values = strip.astype(np.float32, copy=False)
        finite = values[np.isfinite(values)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if lo > hi:  # no finite pixel at all
        lo = hi = 0.0

    def to_bytes(strip: np.ndarray) -> np.ndarray:
        values = strip.astype(np.float32, copy=False)
        if lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            values = values / np.float32(257.0)
        elif hi > lo:
            values = (values - np.float32(lo)) * np.float32(255.0 / (hi - lo))
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(values + 0.5, 0, 255).astype(np.uint8)

    return _mapped_to_l(img, to_bytes)
