"""Image formats beyond Pillow's own, multi-frame files, and which files belong to the same shot.

Phones save HEIC (iPhone) and AVIF; Pillow alone reads neither HEIF nor (unless built with libavif) AVIF. pillow-heif
adds them as ordinary Pillow openers. The package is optional: without it those files are simply not supported, and
register_extra_formats says which formats are.

Every image pixsearch decodes (files, uploads, query images, thumbnails, regions, reindex) is opened by open_image,
which gives Pillow only the openers of DECODED_FORMATS: Pillow's ~40 other decoders, EPS among them (Ghostscript run
on the file's PostScript), are never reached by bytes a user or a folder supplies.
"""
from __future__ import annotations

import io
import os
import re
import threading

from PIL import Image, features

# The suffixes of the formats Pillow reads itself, lower case (scan looks for these, and for EXTRA_SUFFIXES of the
# formats that can be registered).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
# Suffixes per format, lower case. ".hif" is what Canon and Fujifilm cameras call their HEIF files.
EXTRA_SUFFIXES_BY_FORMAT: dict[str, frozenset[str]] = {
    "HEIF": frozenset({".heic", ".heif", ".hif"}),
    "AVIF": frozenset({".avif"}),
}
EXTRA_SUFFIXES = frozenset().union(*EXTRA_SUFFIXES_BY_FORMAT.values())

# The formats pixsearch opens, as Pillow names its openers; HEIF and AVIF are added when register_extra_formats finds
# them. Multi-picture JPEGs (phones, 3D cameras) come through the JPEG opener, which gives them format "MPO".
DECODED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
SUPPORTED_FORMATS_TEXT = "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC or AVIF"

_lock = threading.Lock()
_available: frozenset[str] | None = None


def register_extra_formats() -> frozenset[str]:
    """Register HEIF (and AVIF, when Pillow cannot read it itself) with Pillow; returns the extra formats that can
    now be opened, e.g. {"HEIF", "AVIF"}. Idempotent and thread-safe; never raises when pillow-heif is missing.

    AVIF: Pillow >= 11.2 built with libavif reads it natively (the PyPI wheels are); pillow-heif >= 1.0 dropped its
    AVIF opener for that reason, older releases still have register_avif_opener, used only as a fallback.
    Depth and auxiliary images are not decoded: only the primary image is indexed."""
    global _available
    with _lock:
        if _available is not None:
            return _available
        found: set[str] = set()
        try:
            import pillow_heif
        except ImportError:
            pillow_heif = None
        if pillow_heif is not None:
            pillow_heif.register_heif_opener(depth_images=False, aux_images=False)
            found.add("HEIF")
        if features.check("avif"):
            found.add("AVIF")
        elif pillow_heif is not None and hasattr(pillow_heif, "register_avif_opener"):
            pillow_heif.register_avif_opener(depth_images=False, aux_images=False)
            found.add("AVIF")
        _available = frozenset(found)
        return _available


def available_suffixes() -> frozenset[str]:
    """The extra suffixes worth scanning for: those of the formats register_extra_formats could register."""
    return frozenset().union(*(EXTRA_SUFFIXES_BY_FORMAT[f] for f in register_extra_formats()))


def decoded_formats() -> tuple[str, ...]:
    """DECODED_FORMATS and the extra formats registered here (HEIF, AVIF): the only openers open_image uses."""
    return DECODED_FORMATS + tuple(sorted(register_extra_formats()))


def open_image(data: bytes) -> Image.Image:
    """Image.open on a file's bytes, trying only the openers of decoded_formats(). Nothing is decoded until load();
    raises what Image.open raises (UnidentifiedImageError for bytes of any other format)."""
    return Image.open(io.BytesIO(data), formats=decoded_formats())


def first_frame(img: Image.Image) -> Image.Image:
    """Put a multi-frame image on the frame that stands for the photo and return it (the same object).

    Animated GIF, WebP and APNG, and AVIF sequences: frame 0 (APNG's default image when it has one). HEIF
    collections (bursts, edits saved beside the original): the *primary* image, which pillow-heif opens by default
    and which need not be item 0. Only seeks: nothing is decoded until the caller loads, and the frame count of a GIF
    (which Pillow finds by reading the whole file) is never asked for."""
    if img.format == "HEIF":
        if img.info.get("primary", True):
            return img
        for index in range(getattr(img, "n_frames", 1)):  # cheap for HEIF: a list of items
            img.seek(index)
            if img.info.get("primary"):
                return img
        img.seek(0)
        return img
    if img.tell() != 0:
        img.seek(0)
    return img


# -- companions -------------------------------------------------------------------------------------------------------

_MEDIA_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".dng", ".cr2", ".cr3",
    ".nef", ".arw", ".orf", ".rw2", ".raf", ".mov", ".mp4", ".m4v", ".xmp", ".txt", ".aae", ".json",
}) | EXTRA_SUFFIXES
# Inner markers phone cameras put before the real suffix: Pixel motion photos (".MP.jpg"), their covers and RAW pairs.
_INNER_MARKER = re.compile(r"^\.(?:mp|mp~\d+|cover|raw-\d+|night|portrait)$")
_APPLE_EDIT = re.compile(r"^img_[eo](\d{4,})$")  # IMG_E1234 (edited export), IMG_O1234 (original, with .AAE)
_PIXEL_BURST = re.compile(r"^\d{5}img_\d{5}_burst(\d+)(?:_cover)?$")  # 00000IMG_00000_BURST20180101123456789_COVER
_BURST = re.compile(r"^(.+?)_burst\d*.*$")  # IMG_1234_BURST0001, IMG_1234_BURST0001_COVER
_EDITED = re.compile(r"^(.+?)(?:[-_ ]edited|\s*\(edited\))$")  # Google Photos exports: IMG_1234-edited


def companion_key(path: str) -> str:
    """A key shared by the files of one shot: a Live Photo's IMG_1234.HEIC and IMG_1234.MOV, a RAW+JPEG pair, the
    frames of a burst, an edited copy and its original, and their sidecars.

    The rule, on the file name within its folder (files in different folders never group):
      1. drop the suffix, and then any further media suffix or camera marker (photo.jpg.xmp, PXL_1.MP.jpg -> photo,
         PXL_1); other dots are part of the name (holiday.2019.jpg stays "holiday.2019");
      2. lower-case it (IMG_1234.HEIC and img_1234.mov are one shot on case-insensitive disks);
      3. Apple's edited/original exports: IMG_E1234 / IMG_O1234 -> img_1234;
      4. bursts: IMG_1234_BURST0001[_COVER] -> img_1234; Pixel's 0000nIMG_0000n_BURST<time>[_COVER] -> burst<time>;
      5. "-edited" / "(edited)" copies -> their original's name.
    The key is "<folder>/<name>"; grouping by it is a hint for display (stack a burst, hide the .MOV), not identity."""
    folder, name = os.path.split(path)
    stem, _ = os.path.splitext(name)
    while True:
        inner_stem, inner = os.path.splitext(stem)
        if inner and (inner.lower() in _MEDIA_SUFFIXES or _INNER_MARKER.match(inner.lower())):
            stem = inner_stem
        else:
            break
    key = stem.lower().strip()
    if match := _PIXEL_BURST.match(key):
        key = f"burst{match.group(1)}"
    elif match := _BURST.match(key):
        key = match.group(1)
    if match := _APPLE_EDIT.match(key):
        key = f"img_{match.group(1)}"
    if match := _EDITED.match(key):
        key = match.group(1)
    return os.path.join(folder, key or name.lower())
