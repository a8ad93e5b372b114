"""Decoding: formats, orientation, metadata and the clear reasons given for files that are not usable images."""
from __future__ import annotations

import io
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image

from pixsearch.ingest.decode import DecodeError, decode_bytes


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _halves(width: int = 64, height: int = 32) -> Image.Image:
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


def test_exif_orientation_is_applied_and_reported_size_is_upright():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90° clockwise
    decoded = decode_bytes(_encode(_halves(), "JPEG", exif=exif, quality=95))
    assert decoded.image.size == (32, 64)
    assert (decoded.width, decoded.height) == (32, 64)
    top, bottom = np.asarray(decoded.image)[2, 16], np.asarray(decoded.image)[-3, 16]
    assert top[0] > 200 and top[2] < 60  # red half ends up on top after rotating clockwise
    assert bottom[2] > 200 and bottom[0] < 60


def test_exif_date_camera_and_gps_are_read():
    exif = Image.Exif()
    exif[271] = "Canon"
    exif[272] = "Canon EOS 5D"
    exif.get_ifd(0x8769)[36867] = "2021:07:04 12:30:05"
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 30.0, 0.0), 3: "W", 4: (1.0, 15.0, 0.0)})
    decoded = decode_bytes(_encode(_halves(), "JPEG", exif=exif))
    assert decoded.taken_at == datetime(2021, 7, 4, 12, 30, 5, tzinfo=timezone.utc)
    assert decoded.camera == "Canon EOS 5D"
    assert decoded.gps_lat == pytest.approx(52.5)
    assert decoded.gps_lon == pytest.approx(-1.25)


def test_large_jpeg_is_draft_decoded_but_keeps_its_true_size():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (2400, 3200, 3), dtype=np.uint8))
    decoded = decode_bytes(_encode(big, "JPEG"))
    assert (decoded.width, decoded.height) == (3200, 2400)
    assert decoded.image.size[0] < 3200 and min(decoded.image.size) >= 320


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_formats_decode_to_rgb(fmt):
    decoded = decode_bytes(_encode(_halves(), fmt))
    assert decoded.image.mode == "RGB"
    assert decoded.format == fmt
    assert (decoded.width, decoded.height) == (64, 32)


def test_gif_uses_the_first_frame():
    red, blue = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    data = _encode(red, "GIF", save_all=True, append_images=[blue], duration=100)
    pixel = decode_bytes(data).image.getpixel((8, 8))
    assert pixel[0] > 200 and pixel[2] < 60


def test_sixteen_bit_greyscale_is_scaled_by_its_bit_depth_not_clipped():
    twelve_bit = (np.linspace(0, 4000, 64 * 32).reshape(32, 64)).astype(np.uint16)
    rgb = np.asarray(decode_bytes(_encode(Image.fromarray(twelve_bit), "PNG")).image)
    assert 245 <= rgb.max() <= 255 and rgb[0, 0, 0] == 0 and 100 < rgb[16, 32, 0] < 160
    full = np.full((8, 8), 32896, dtype=np.uint16)
    full[0, 0] = 65535
    rgb = np.asarray(decode_bytes(_encode(Image.fromarray(full), "PNG")).image)
    assert rgb[0, 0, 0] == 255 and rgb[4, 4, 0] == 128  # full 16-bit data: exactly v / 257


def test_transparent_png_is_composited_on_neutral_grey():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert decode_bytes(_encode(img, "PNG")).image.getpixel((4, 4)) == (127, 127, 127)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"this is a text file, not a picture\n" * 10, "not an image"),
    ],
)
def test_unusable_files_say_why(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_bytes(data)


def test_truncated_jpeg_is_reported_as_corrupt():
    data = _encode(_halves(640, 480), "JPEG")
    with pytest.raises(DecodeError, match="corrupt or truncated"):
        decode_bytes(data[: len(data) // 2])
