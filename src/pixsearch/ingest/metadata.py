"""Photo facts read from EXIF (camera, lens, capture time with its UTC offset, GPS), sanitised field by field.

Real files carry anything: NUL bytes inside strings ("Nokia\\x002"), bytes that are not UTF-8, kilobytes of text in a
tag, rationals with a zero denominator. PostgreSQL refuses NUL and invalid UTF-8 in text, so a single such photo
used to fail a whole batch. Every value here is cleaned or dropped on its own; nothing in a file's metadata can stop
the file from being indexed.
"""
from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from PIL import Image

MAX_TEXT_CHARS = 256
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_MAKE, _MODEL, _ORIENTATION, _DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED = 0x9003, 0x9004
_OFFSET_TIME, _OFFSET_TIME_ORIGINAL, _OFFSET_TIME_DIGITIZED = 0x9010, 0x9011, 0x9012
_SUBSEC_TIME, _SUBSEC_ORIGINAL, _SUBSEC_DIGITIZED = 0x9290, 0x9291, 0x9292
_LENS_MAKE, _LENS_MODEL = 0xA433, 0xA434
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


def camera_facts(exif: Image.Exif) -> dict[str, Any]:
    """EXIF facts about the capture; unreadable values are left out.

    Keys: make, model, camera (make and model as one name, without the make twice), lens (LensModel), lens_make,
    orientation (1..8), taken_at (timezone-aware) with taken_at_source, gps_lat, gps_lon and gps_alt (metres,
    negative below sea level).

    taken_at pairs each EXIF time with its own offset tag: DateTimeOriginal + OffsetTimeOriginal, else
    DateTimeDigitized + OffsetTimeDigitized, else DateTime + OffsetTime (never an offset of another time: editors
    rewrite DateTime/OffsetTime in the editor's zone). With an offset: the true instant, source "exif". Without
    one: the wall-clock time labelled UTC, source "exif-no-offset" — so a caller can
    tell "14:30 somewhere" from "14:30 UTC". Sub-seconds (SubSecTime*) are kept."""
    facts: dict[str, Any] = {}
    make, model = clean_text(exif_value(exif, _MAKE)), clean_text(exif_value(exif, _MODEL))
    if make:
        facts["make"] = make
    if model:
        facts["model"] = model
    if make or model:
        make, model = make or "", model or ""
        facts["camera"] = model if model.lower().startswith(make.lower()) else f"{make} {model}".strip()
    gps = _gps(exif)
    if gps is not None:
        facts["gps_lat"], facts["gps_lon"] = gps
    sub = exif_ifd(exif, _EXIF_IFD)
    lens, lens_make = clean_text(sub.get(_LENS_MODEL)), clean_text(sub.get(_LENS_MAKE))
    if lens:
        facts["lens"] = lens
    if lens_make:
        facts["lens_make"] = lens_make
    orientation = exif_value(exif, _ORIENTATION)
    if isinstance(orientation, int) and 1 <= orientation <= 8:
        facts["orientation"] = orientation
    for stamp_tag, offset_tag, subsec_tag, where in (
        (_DATETIME_ORIGINAL, _OFFSET_TIME_ORIGINAL, _SUBSEC_ORIGINAL, sub),
        (_DATETIME_DIGITIZED, _OFFSET_TIME_DIGITIZED, _SUBSEC_DIGITIZED, sub),
        (_DATETIME, _OFFSET_TIME, _SUBSEC_TIME, None),
    ):
        # The standard places: DateTime in IFD0, the rest in the Exif IFD; some writers put any of them in IFD0.
        stamp = where.get(stamp_tag) if where is not None else exif_value(exif, stamp_tag)
        if stamp is None and where is not None:
            stamp = exif_value(exif, stamp_tag)
        taken = exif_datetime(stamp, exif_either(sub, exif, subsec_tag))
        if taken is None:
            continue
        offset = utc_offset(exif_either(sub, exif, offset_tag))
        if offset is None:
            facts["taken_at"], facts["taken_at_source"] = taken.replace(tzinfo=timezone.utc), "exif-no-offset"
        else:
            facts["taken_at"], facts["taken_at_source"] = taken.replace(tzinfo=offset), "exif"
        break
    altitude = gps_altitude(exif)
    if altitude is not None and "gps_lat" in facts:
        facts["gps_alt"] = altitude
    return facts


def exif_value(exif: Any, tag: int) -> Any:
    try:
        return exif.get(tag)
    except Exception:  # noqa: BLE001
        return None


def exif_either(sub: dict, exif: Any, tag: int) -> Any:
    value = sub.get(tag)
    return value if value is not None else exif_value(exif, tag)


def exif_ifd(exif: Any, tag: int) -> dict:
    try:
        return dict(exif.get_ifd(tag))
    except Exception:  # noqa: BLE001 - a broken sub-IFD: read the rest
        return {}


def exif_datetime(stamp: Any, subsec: Any) -> datetime | None:
    text = clean_text(stamp, 64)
    match = re.match(r"^(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})", text or "")
    if not match or match.group(1) == "0000":
        return None
    try:
        stamp = datetime(*(int(g) for g in match.groups()))
    except ValueError:
        return None
    digits = re.match(r"\d{1,6}", clean_text(subsec, 16) or "")
    return stamp.replace(microsecond=int(digits.group(0).ljust(6, "0"))) if digits else stamp


def utc_offset(value: Any) -> timezone | None:
    """"+02:00", "-0530", "Z" -> a fixed offset; blanks ("   :  ") and nonsense -> None."""
    text = clean_text(value, 16)
    if not text:
        return None
    if text.upper() == "Z":
        return timezone.utc
    match = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", text)
    if not match:
        return None
    minutes = int(match.group(2)) * 60 + int(match.group(3))
    if minutes > 14 * 60 or int(match.group(3)) >= 60:
        return None
    return timezone(timedelta(minutes=minutes if match.group(1) == "+" else -minutes))


def gps_altitude(exif: Any) -> float | None:
    gps = exif_ifd(exif, _GPS_IFD)
    if 6 not in gps:
        return None
    try:
        altitude = float(gps[6])
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    if not math.isfinite(altitude) or not -100_000 <= altitude <= 100_000:  # 0/0 rationals read as NaN
        return None
    ref = gps.get(5, 0)
    below = (ref[:1] == b"\x01") if isinstance(ref, (bytes, bytearray)) else ref == 1
    return -abs(altitude) if below else altitude




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
