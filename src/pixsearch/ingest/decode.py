"""Read one file: its bytes, content hash, pixels (EXIF-oriented, JPEG draft-decoded) and photo metadata."""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone

from PIL import Image, ImageOps, UnidentifiedImageError

# Decode JPEGs at the smallest DCT scale that keeps both sides at least this large (the model sees 224 px).
DRAFT_SIZE = (320, 320)
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME_ORIGINAL, _DATETIME, _MAKE, _MODEL, _ORIENTATION = 36867, 306, 271, 272, 274


class DecodeError(ValueError):
    """The file is not a usable image; the message is the reason shown to the user."""


@dataclass
class DecodedImage:
    image: Image.Image
    content_hash: str
    format: str
    width: int
    height: int
    taken_at: datetime | None = None
    camera: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_and_decode(path: str) -> DecodedImage:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except PermissionError:
        raise DecodeError("permission denied") from None
    except OSError as exc:
        raise DecodeError(f"cannot read: {exc.strerror or exc}") from None
    return decode_bytes(data)


def decode_bytes(data: bytes, digest: str | None = None) -> DecodedImage:
    """Decode an image file's bytes; `digest` is their content_hash when the caller already computed it."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            exif = img.getexif()
            orientation = exif.get(_ORIENTATION, 1)
            width, height = img.size
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            if fmt == "JPEG":
                img.draft("RGB", DRAFT_SIZE)
            img.load()
            img = ImageOps.exif_transpose(img)
            img = to_rgb(img)
    except UnidentifiedImageError:
        raise DecodeError("not an image, or an unsupported image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"image too large to decode safely: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"corrupt or truncated image: {exc}") from None
    meta = _photo_metadata(exif)
    return DecodedImage(image=img, content_hash=digest or content_hash(data), format=fmt, width=width, height=height, **meta)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (127, 127, 127))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything above 255 to white.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        return Image.fromarray((arr * (255.0 / top)).astype("uint8")).convert("RGB")
    return img.convert("RGB")


def _photo_metadata(exif: Image.Exif) -> dict:
    meta: dict = {}
    try:
        sub = exif.get_ifd(_EXIF_IFD)
        stamp = sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
        if stamp:
            # EXIF times carry no zone; keep the wall-clock time, labelled UTC.
            meta["taken_at"] = datetime.strptime(str(stamp).strip("\x00 "), "%Y:%m:%d %H:%M:%S").replace(
                tzinfo=timezone.utc
            )
    except (ValueError, TypeError, KeyError):
        pass
    make, model = exif.get(_MAKE), exif.get(_MODEL)
    if make or model:
        make_s, model_s = str(make or "").strip("\x00 "), str(model or "").strip("\x00 ")
        meta["camera"] = model_s if model_s.lower().startswith(make_s.lower()) else f"{make_s} {model_s}".strip()
    try:
        gps = exif.get_ifd(_GPS_IFD)
        if 2 in gps and 4 in gps:
            meta["gps_lat"] = _dms(gps[2], gps.get(1, "N"), "S")
            meta["gps_lon"] = _dms(gps[4], gps.get(3, "E"), "W")
    except (ValueError, TypeError, ZeroDivisionError, KeyError):
        meta.pop("gps_lat", None)
        meta.pop("gps_lon", None)
    return meta


def _dms(values, ref, negative_ref: str) -> float:
    degrees, minutes, seconds = (float(v) for v in values)
    sign = -1.0 if str(ref).upper().startswith(negative_ref) else 1.0
    return sign * (degrees + minutes / 60.0 + seconds / 3600.0)
