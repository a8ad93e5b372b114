"""The one pixel path every part shares: a decoded Pillow image -> upright, 8-bit RGB.

Ingest, query images, thumbnails and every embedder's input preparation go through these functions, so a 16-bit
PNG, a paletted GIF with transparency or a rotated phone photo look the same to every model and every front door.
"""
from __future__ import annotations

import numpy as np
from PIL import ExifTags, Image, ImageOps

# Padding and alpha-compositing colour: mid grey, which input normalisation maps to ~0 for most models.
NEUTRAL_RGB = (127, 127, 127)
_ORIENTATION = ExifTags.Base.Orientation
_LEVELS = np.arange(65536, dtype=np.uint32)


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
    """Any Pillow mode -> 8-bit RGB. Transparency is composited on NEUTRAL_RGB; 16-bit greyscale is scaled by
    the bit depth its pixels use (see _sixteen_to_l); 32-bit integer and float images by the range their pixels use."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode.startswith("I;16"):
        img = _sixteen_to_l(img)
    elif mode in ("I", "F"):
        img = _wide_to_l(img)
    if img.mode == "RGBA":
        canvas = Image.new("RGB", img.size, NEUTRAL_RGB)
        canvas.paste(img, mask=img.getchannel("A"))
        return canvas
    return img if img.mode == "RGB" else img.convert("RGB")


def _sixteen_to_l(img: Image.Image) -> Image.Image:
    """16-bit greyscale -> L. 16-bit files often hold 10-, 12- or 14-bit data (scientific and medical images, some
    scanners), which 1/257 would turn nearly black: scale by the smallest bit depth that holds the brightest pixel
    (full 16-bit data: exactly 1/257). Done through a 65536-entry lookup table: one byte per output pixel, no
    float copy of the frame."""
    pixels = np.asarray(img)
    brightest = int(pixels.max()) if pixels.size else 0
    top = (1 << max(8, brightest.bit_length())) - 1
    table = np.minimum((_LEVELS * 255 + top // 2) // top, 255).astype(np.uint8)
    return Image.fromarray(table[pixels], "L")


def _wide_to_l(img: Image.Image) -> Image.Image:
    """32-bit integer or float greyscale -> L. The mode does not fix the range, so use what the pixels span:
    0..255 as is, 0..65535 as 16-bit, anything else stretched. float32 work: no wider than the frame itself."""
    arr = np.asarray(img, dtype=np.float32)
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if lo >= 0 and hi <= 255:
        pass
    elif lo >= 0 and hi <= 65535:
        arr = arr / np.float32(257.0)
    elif hi > lo:
        arr = (arr - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
