"""Read one file, boundedly, and decode it: bytes, content hash, upright RGB pixels and sanitised metadata.

Reads are bounded (a maximum file size) and open regular files only, so a FIFO, a device or a huge file named
`*.jpg` is a per-file failure instead of a hang or an exhausted machine. Only the documented formats are opened
(formats.open_image), the pixel count is checked from the image header before any pixels are decoded, and whatever
a decoder raises is this file's DecodeError.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from PIL import Image, UnidentifiedImageError

from pixsearch.imaging import to_eight_bit, to_rgb, upright
from pixsearch.ingest.formats import SUPPORTED_FORMATS_TEXT, first_frame, open_image, register_extra_formats
from pixsearch.ingest.metadata import camera_facts
from pixsearch.limits import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_PIXELS

register_extra_formats()  # HEIF (and AVIF where Pillow lacks it) open like any other format, when installed

log = logging.getLogger(__name__)

# Decode JPEGs at the smallest DCT scale that keeps both sides at least this large (the models see <= 260 px).
DRAFT_SIZE = (320, 320)
_ORIENTATION = 274
_FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link"}


class DecodeError(ValueError):
    """The file is not a usable image; the message is the reason shown to the user."""


@dataclass
class DecodedImage:
    """Upright RGB pixels, the file's size facts, what its EXIF says about the capture (see metadata.camera_facts)
    and whatever the caller's `describe` read from the opened file."""

    image: Image.Image
    content_hash: str
    format: str
    width: int
    height: int
    taken_at: datetime | None = None
    taken_at_source: str | None = None  # "exif" (with its UTC offset), "exif-no-offset"; the caller may add others
    camera: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    described: Any = None
    warnings: list[str] = field(default_factory=list)


Describe = Callable[[Image.Image, Image.Exif], Any]


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_kind(mode: int) -> str:
    return _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")


def read_file(path: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES, follow_symlinks: bool = True) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (see read_file_with_stat)."""
    return read_file_with_stat(path, max_bytes=max_bytes, follow_symlinks=follow_symlinks)[0]


def read_file_with_stat(
    path: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES, follow_symlinks: bool = True
) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file of at most `max_bytes`, and its size and times as they were while it was read.
    Opened without blocking (a FIFO cannot hang the read) and, unless `follow_symlinks`, refusing a symbolic link;
    the type is checked on the open file, so swapping the file for something else after a scan does not get past
    it. A file that changes while it is read (still being copied or written) is a DecodeError, not a mix."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise DecodeError("a symbolic link (not followed)") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise DecodeError("permission denied") from None
        raise DecodeError(f"cannot read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DecodeError(f"not a regular file ({file_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise DecodeError(f"larger than the {_megabytes(max_bytes)} limit ({_megabytes(info.st_size)})")
        chunks, remaining = [], max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        after = os.fstat(fd)
    except OSError as exc:
        raise DecodeError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while being read
        raise DecodeError(f"larger than the {_megabytes(max_bytes)} limit")
    if (after.st_size, after.st_mtime_ns) != (info.st_size, info.st_mtime_ns) or len(data) != after.st_size:
        raise DecodeError("the file changed while it was read (still being written?): index it again once it is "
                          "complete")
    return data, after


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n} bytes"


def read_and_decode(
    path: str,
    *,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    draft: tuple[int, int] | None = DRAFT_SIZE,
) -> DecodedImage:
    return decode_bytes(read_file(path, max_bytes=max_bytes), max_pixels=max_pixels, draft=draft)


def decode_bytes(
    data: bytes,
    digest: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    draft: tuple[int, int] | None = DRAFT_SIZE,
    describe: Describe | None = None,
) -> DecodedImage:
    """Decode an image file's bytes; `digest` is their content_hash when the caller already computed it. Images of
    more than `max_pixels` (read from the header) are refused before their pixels are decoded. JPEGs are decoded at
    the smallest scale that keeps `draft` (None: full size). Multi-frame files give the frame that stands for the
    photo (formats.first_frame). `describe(image, exif)` runs on the file as opened, before any conversion (where
    XMP, IPTC and comments still are); what it returns is `described` (it must not raise for bad metadata)."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own pixel cap decides; Pillow's bomb check (2x its MAX_IMAGE_PIXELS) stays as the last guard.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = first_frame(open_image(data))
            fmt = img.format or "unknown"
            width, height = img.size
            if width * height > max_pixels:
                raise DecodeError(
                    f"{width}x{height} is {width * height / 1e6:.0f} megapixels, over the "
                    f"{max_pixels / 1e6:g} MP limit (setting max_image_megapixels)"
                )
            exif, warned = _exif(img)
            if exif.get(_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
            described = describe(img, exif) if describe is not None else None
            if fmt in ("JPEG", "MPO") and draft is not None:  # MPO: a JPEG with a multi-picture index
                img.draft("RGB", draft)
            img.load()
            img = upright(img)
            # Rebinding drops a 16/32-bit frame (4x the 8-bit one) before the RGB copy is made.
            img = to_eight_bit(img)
            img = to_rgb(img)
    except UnidentifiedImageError:
        raise DecodeError(f"not an image, or an unsupported image format (supported: {SUPPORTED_FORMATS_TEXT})"
                          ) from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image too large to decode safely: {exc}") from None
    except DecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"corrupt or truncated image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a decoder failing its own way (a TIFF whose strip offsets are text
        # raises TypeError) is still one bad file, never a failed run or a 500
        raise DecodeError(f"corrupt image ({type(exc).__name__}: {exc})") from None
    try:
        facts = camera_facts(exif)
    except Exception as exc:  # noqa: BLE001 - metadata is a bonus: never lose the photo over it
        facts, warned = {}, warned + [f"metadata not read: {type(exc).__name__}: {exc}"]
    return DecodedImage(
        image=img, content_hash=digest or content_hash(data), format=fmt, width=width, height=height,
        taken_at=facts.get("taken_at"), taken_at_source=facts.get("taken_at_source"), camera=facts.get("camera"),
        camera_make=facts.get("make"), camera_model=facts.get("model"), lens=facts.get("lens"),
        gps_lat=facts.get("gps_lat"), gps_lon=facts.get("gps_lon"), described=described, warnings=warned,
    )


def _exif(img: Image.Image) -> tuple[Image.Exif, list[str]]:
    try:
        return img.getexif(), []
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block: index the pixels without it
        return Image.Exif(), [f"EXIF not read: {type(exc).__name__}: {exc}"]
