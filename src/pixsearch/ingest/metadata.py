"""Photo metadata read from EXIF, sanitised field by field.

Real files carry anything: NUL bytes inside strings ("Nokia\\x002"), bytes that are not UTF-8, kilobytes of text in a
tag, rationals with a zero denominator. PostgreSQL refuses NUL and invalid UTF-8 in text, so a single such photo
used to fail a whole batch. Every value here is cleaned or dropped on its own; nothing in a file's metadata can stop
the file from being indexed.
"""
from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any

from PIL import Image

MAX_TEXT_CHARS = 256
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME_ORIGINAL, _DATETIME, _MAKE, _MODEL = 36867, 306, 271, 272
# C0 controls other than tab and newline, and DEL: never meaningful in a tag, and NUL is refused by PostgreSQL.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(value: Any, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """A string fit for a text column, or None: bytes decoded as UTF-8 (invalid bytes become U+FFFD), strings that
    Pillow decoded as Latin-1 re-read as UTF-8, lone surrogates replaced, control characters removed, cut to
    `max_chars`. Numbers become their text; other types (tuples, rationals...) are dropped."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "replace")
    elif isinstance(value, str):
        text = _repair_unicode(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        text = str(value)
    else:
        return None
    text = _CONTROLS.sub("", text).strip()
    return text[:max_chars].rstrip() or None


def _repair_unicode(text: str) -> str:
    if text.isascii():
        return text
    if max(text) <= "\xff":
        # Pillow decodes EXIF ASCII tags as Latin-1; cameras and phones write UTF-8 there. Bytes that are not UTF-8
        # come out as U+FFFD instead of mojibake.
        return text.encode("latin-1").decode("utf-8", "replace")
    try:  # file names: undecodable bytes arrive as surrogate escapes
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def photo_metadata(exif: Image.Exif) -> dict[str, Any]:
    """taken_at, camera, gps_lat, gps_lon from EXIF; a value that cannot be read is left out."""
    meta: dict[str, Any] = {}
    taken = _taken_at(exif)
    if taken is not None:
        meta["taken_at"] = taken
    make, model = clean_text(exif.get(_MAKE)), clean_text(exif.get(_MODEL))
    if make or model:
        make, model = make or "", model or ""
        meta["camera"] = model if model.lower().startswith(make.lower()) else f"{make} {model}".strip()
    gps = _gps(exif)
    if gps is not None:
        meta["gps_lat"], meta["gps_lon"] = gps
    return meta


def _taken_at(exif: Image.Exif) -> datetime | None:
    try:
        stamp = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
        text = clean_text(stamp)
        if not text:
            return None
        # EXIF times carry no zone; keep the wall-clock time, labelled UTC.
        return datetime.strptime(text, "%Y:%m:%d %H:%M:%S").replace(tzinfo=timezone.utc)
    except (ValueError, TypeError, KeyError, OverflowError):
        return None


def _gps(exif: Image.Exif) -> tuple[float, float] | None:
    try:
        gps = exif.get_ifd(_GPS_IFD)
        if 2 not in gps or 4 not in gps:
            return None
        lat = _degrees(gps[2], gps.get(1, "N"), "S")
        lon = _degrees(gps[4], gps.get(3, "E"), "W")
    except (ValueError, TypeError, ZeroDivisionError, KeyError, OverflowError):
        return None
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return lat, lon


def _degrees(values: Any, ref: Any, negative_ref: str) -> float | None:
    """Degrees, minutes, seconds (rationals; a zero denominator reads as NaN) -> signed decimal degrees."""
    degrees, minutes, seconds = (float(v) for v in values)
    total = degrees + minutes / 60.0 + seconds / 3600.0
    if not math.isfinite(total):
        return None
    sign = -1.0 if (clean_text(ref) or "").upper().startswith(negative_ref) else 1.0
    return sign * total
