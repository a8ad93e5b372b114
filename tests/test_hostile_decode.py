"""Hostile image files (issue 19, items 2 and 3): only the documented formats reach a decoder, whatever a decoder raises
is that one file's failure, and 32-bit frames are reduced to 8 bits without full-frame float copies.

Every file here is made by Pillow itself (or is a Pillow-written file with one field changed). Ghostscript: Pillow runs
`gs` on any EPS it is asked to load; this machine has none, so the tests put a stand-in `gs` first on PATH that
records each call and fails as Ghostscript does on PostScript it cannot render. A subprocess never spawned is the
point: the stand-in's log must stay empty.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from helpers import copy_some
from pixsearch.ingest.decode import DecodeError, decode_bytes
from pixsearch.ingest.formats import decoded_formats, register_extra_formats

# Formats Pillow reads (and can write, so the tests make them) that pixsearch does not document: each must be refused
# before any decoder runs. IM is Pillow's own format; EPS is rendered by Ghostscript.
FOREIGN_FORMATS = ("EPS", "PCX", "SGI", "TGA", "PPM", "IM", "QOI")
SIDE = 7000  # the float TIFF of the issue: 7000x7000, one float32 frame is 196 MB
FLOAT_FRAME_BYTES = SIDE * SIDE * 4


def _picture(size: tuple[int, int] = (96, 64)) -> Image.Image:
    rng = np.random.default_rng(19)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _encoded(fmt: str, image: Image.Image | None = None, **options) -> bytes:
    buffer = io.BytesIO()
    (image or _picture()).save(buffer, fmt, **options)
    return buffer.getvalue()


def _foreign_files() -> dict[str, bytes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 13 deprecates its IM format: still readable
        return {fmt: _encoded(fmt) for fmt in FOREIGN_FORMATS}


def _tiff_with_text_strip_offsets() -> bytes:
    """A valid TIFF whose StripOffsets entry is retyped from LONG to ASCII: Pillow opens it, and its loader then
    seeks to a str and raises TypeError, none of the errors a decoder is documented to raise."""
    data = bytearray(_encoded("TIFF"))
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * entry
        if struct.unpack_from("<H", data, at)[0] == 273:  # StripOffsets
            struct.pack_into("<HI", data, at + 2, 2, 1)  # type ASCII, one character: the offset's first byte
            return bytes(data)
    raise AssertionError("no StripOffsets entry")


@pytest.fixture(scope="module")
def fake_ghostscript(tmp_path_factory) -> tuple[dict[str, str], Path]:
    """(environment with a stand-in `gs` first on PATH, the file it logs its calls to)."""
    folder = tmp_path_factory.mktemp("fake-gs")
    log = folder / "calls.log"
    script = folder / "gs"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n[ "$1" = "--version" ] && {{ echo 10.02.1; exit 0; }}\n'
                      'echo "Error: /undefined in whatever" >&2\nexit 1\n')
    script.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}, log


# -- item 2: only the documented formats are opened --------------------------------------------------------------------
def test_only_the_documented_formats_are_decoded():
    for fmt, data in _foreign_files().items():
        with pytest.raises(DecodeError, match="unsupported image format"):
            decode_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself would have opened it
    documented = {"JPEG": _encoded("JPEG"), "PNG": _encoded("PNG"), "WEBP": _encoded("WEBP"), "GIF": _encoded("GIF"),
                  "BMP": _encoded("BMP"), "TIFF": _encoded("TIFF", compression="tiff_deflate"),
                  "MPO": _encoded("MPO", save_all=True, append_images=[_picture()])}
    extra = register_extra_formats()
    assert set(extra) <= set(decoded_formats())  # HEIF/AVIF, when registered, are in the one list
    if "HEIF" in extra:
        documented["HEIF"] = _encoded("HEIF")
    if "AVIF" in extra:
        documented["AVIF"] = _encoded("AVIF")
    for fmt, data in documented.items():
        decoded = decode_bytes(data)
        assert (decoded.format, decoded.image.mode, decoded.image.size) == (fmt, "RGB", (96, 64))


def test_a_decoder_failing_in_its_own_way_is_a_decode_error():
    data = _tiff_with_text_strip_offsets()
    with pytest.raises(TypeError):  # what Pillow raises for it
        Image.open(io.BytesIO(data)).load()
    with pytest.raises(DecodeError, match="corrupt image.*TypeError"):
        decode_bytes(data)


def test_index_fails_foreign_and_broken_files_one_by_one_and_indexes_the_rest(home, samples, tmp_path, index_name,
                                                                              embedder, fake_ghostscript):
    embedder.embed_texts(["warm the class-embedding cache"])  # the subprocess reuses the cache under home
    env, gs_calls = fake_ghostscript
    photos = tmp_path / "photos"
    good = copy_some(samples, photos, ["cat-chelsea.png", "rocket.jpg"])
    suffixes = {"EPS": ".jpg", "PCX": ".png", "SGI": ".tif", "TGA": ".jpg", "PPM": ".png", "IM": ".bmp",
                "QOI": ".webp"}
    bad = {}
    for fmt, data in _foreign_files().items():
        bad[fmt] = photos / f"really-{fmt.lower()}{suffixes[fmt]}"
        bad[fmt].write_bytes(data)
    bad["broken TIFF"] = photos / "text-offsets.tif"
    bad["broken TIFF"].write_bytes(_tiff_with_text_strip_offsets())

    result = run_cli("index", str(photos), "--index", index_name, "--json", home=home, env=env)
    assert result.returncode == 3, result.stderr  # some files failed, the run did not
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    reasons = {Path(item["path"]).name: item["reason"] for item in summary["failed"]}
    assert summary["added"] == len(good) and set(reasons) == {path.name for path in bad.values()}
    for fmt in FOREIGN_FORMATS:
        assert "unsupported image format" in reasons[bad[fmt].name]
    assert "TypeError" in reasons[bad["broken TIFF"].name]
    assert not gs_calls.exists()  # Ghostscript never ran


@pytest.fixture(scope="module")
def served(home, sample_index, fake_ghostscript):
    """`pixsearch serve` in its own process with the stand-in `gs` on PATH: (base URL, admin key, query key)."""
    from pixsearch.config import Settings
    from pixsearch.service import Engine

    with Engine(Settings.load(home=home)) as engine:
        _, admin_key = engine.create_api_key("admin", "hostile decode test")
        _, query_key = engine.create_api_key("query", "hostile decode test")
    env, _ = fake_ghostscript
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("pixsearch")
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port)],
                            env=dict(os.environ, PIXSEARCH_HOME=str(home), **env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        yield base, admin_key, query_key
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_api_answers_foreign_formats_with_400_and_never_runs_ghostscript(served, sample_index, fake_ghostscript,
                                                                         engine, index_name):
    base, admin_key, query_key = served
    _, gs_calls = fake_ghostscript
    files = _foreign_files()
    with httpx.Client(base_url=base, headers={"api-key": query_key}, timeout=120) as query:
        for fmt, data in files.items():
            r = query.post(f"/indexes/{sample_index}/images/search", files={"image": (f"q.{fmt.lower()}", data)})
            assert r.status_code == 400, (fmt, r.status_code, r.text)
            assert "unsupported image format" in r.json()["error"]["message"], fmt
        ok = query.post(f"/indexes/{sample_index}/images/search", files={"image": ("q.png", _encoded("PNG"))})
        assert ok.status_code == 200, ok.text

    name = index_name
    engine.create_photo_index(name)
    with httpx.Client(base_url=base, headers={"api-key": admin_key}, timeout=120) as admin:
        mpo = _encoded("MPO", save_all=True, append_images=[_picture()])  # a JPEG with an MP index, as phones write
        upload = [("files", ("photo.jpg", mpo, "image/jpeg"))]
        upload += [("files", (f"x.{fmt.lower()}", data, "application/octet-stream")) for fmt, data in files.items()]
        upload.append(("files", ("broken.tif", _tiff_with_text_strip_offsets(), "image/tiff")))
        r = admin.post(f"/indexes/{name}/images", files=upload)
        assert r.status_code == 207, r.text
        results = r.json()["value"]
        assert results[0]["status"] is True and results[0]["statusCode"] == 201, results[0]
        assert [entry["statusCode"] for entry in results[1:]] == [400] * (len(files) + 1), results
        assert all("unsupported image format" in entry["errorMessage"] for entry in results[1:-1])
        assert "TypeError" in results[-1]["errorMessage"]
        assert admin.get(f"/indexes/{name}/docs/$count").text == "1"
        admin.delete(f"/indexes/{name}")
    assert not gs_calls.exists()


# -- item 3: 32-bit images ---------------------------------------------------------------------------------------------
# VmHWM: the peak resident memory of this process's own address space. Not ru_maxrss, which on Linux keeps the
# parent's peak across fork and exec (a test process that made a 7000x7000 image would set the floor).
_PEAK_SCRIPT = """
import sys
from pixsearch.ingest.decode import decode_bytes
image = decode_bytes(open(sys.argv[1], "rb").read()).image
assert (image.mode, image.size) == ("RGB", ({side}, {side})), (image.mode, image.size)
status = open("/proc/self/status").read()
print(int(status.split("VmHWM:")[1].split()[0]) * 1024)
""".format(side=SIDE)


def _peak_memory_of_decoding(path: Path) -> int:
    """Peak resident memory, in bytes, of a fresh Python process that decodes `path` with decode_bytes."""
    result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from Linux's /proc")
def test_a_float_tiff_decodes_in_about_the_memory_of_an_eight_bit_one(tmp_path):
    gradient = Image.linear_gradient("L").resize((SIDE, SIDE))  # the same picture at 8 bits and as float32
    eight_bit, floats = tmp_path / "gradient-l.tif", tmp_path / "gradient-f.tif"
    gradient.save(eight_bit, "TIFF", compression="tiff_adobe_deflate")
    gradient.convert("F").point(lambda v: v * 4.0 - 100).save(floats, "TIFF", compression="tiff_adobe_deflate")
    del gradient
    assert Image.open(floats).mode == "F" and floats.stat().st_size < 1_000_000  # a small file
    eight_bit_peak, float_peak = _peak_memory_of_decoding(eight_bit), _peak_memory_of_decoding(floats)
    # Decoding must hold the float frame once (Pillow decodes into it); before the fix its float32 copies took
    # ~750 MB more than the 8-bit file.
    assert float_peak - eight_bit_peak < FLOAT_FRAME_BYTES, (float_peak / 1e6, eight_bit_peak / 1e6)


# The conversions as they were before they worked in strips: the strip version must give the same bytes.
def _previous_sixteen_to_l(img: Image.Image) -> np.ndarray:
    pixels = np.asarray(img)
    brightest = int(pixels.max()) if pixels.size else 0
    top = (1 << max(8, brightest.bit_length())) - 1
    table = np.minimum((np.arange(65536, dtype=np.uint32) * 255 + top // 2) // top, 255).astype(np.uint8)
    return table[pixels]


def _previous_wide_to_l(img: Image.Image) -> np.ndarray:
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
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


def test_sixteen_and_thirty_two_bit_images_convert_as_before():
    from pixsearch.imaging import to_eight_bit, to_rgb

    rng = np.random.default_rng(3)
    shape = (2500, 1100)  # several strips: the brightest and darkest pixels are put in the last one

    def frame(low: float, high: float, dtype) -> np.ndarray:
        values = rng.uniform(low * 0.5 + high * 0.25, low * 0.25 + high * 0.5, shape)
        values[-3, 7], values[-2, 9] = low, high
        return values.astype(dtype)

    floats = frame(-3.5, 1e6, np.float32)
    floats[5, 5], floats[6, 6], floats[7, 7] = np.nan, np.inf, -np.inf
    cases = {
        "F stretched, NaN and inf": Image.fromarray(floats, "F"),
        "F 0..1": Image.fromarray(frame(0, 1, np.float32), "F"),
        "F 0..255": Image.fromarray(frame(0, 255, np.float32), "F"),
        "F 0..65535": Image.fromarray(frame(0, 65535, np.float32), "F"),
        "F all NaN": Image.fromarray(np.full((40, 30), np.nan, np.float32), "F"),
        "I 0..4000": Image.fromarray(frame(0, 4000, np.int32), "I"),
        "I negative to 2**30": Image.fromarray(frame(-70000, 2 ** 30, np.int32), "I"),
        "I;16 12-bit": Image.frombytes("I;16", shape[::-1], frame(0, 4095, "<u2").tobytes()),
        "I;16 full": Image.frombytes("I;16", shape[::-1], frame(0, 65535, "<u2").tobytes()),
        "I;16B 10-bit": Image.frombytes("I;16B", shape[::-1], frame(0, 1023, ">u2").tobytes()),
    }
    for label, image in cases.items():
        previous = (_previous_sixteen_to_l if image.mode.startswith("I;16") else _previous_wide_to_l)(image)
        converted = to_eight_bit(image)
        assert converted.mode == "L" and np.array_equal(np.asarray(converted), previous), label
        assert np.array_equal(np.asarray(to_rgb(image))[..., 1], previous), label
