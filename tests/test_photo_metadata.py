"""Descriptive metadata (XMP, IPTC, EXIF, sidecars, comments), camera facts, extra formats, OCR and the folder watcher.

Every fixture is written here: JPEGs with an XMP APP1 packet (Pillow's xmp=) and an IPTC IIM block in a Photoshop
APP13 segment spliced in by hand, EXIF XP* tags, sidecars, a HEIC (pillow-heif), animated GIF/WebP/APNG, and images
with rendered text for OCR. Nothing needs the database or the embedding models.
"""
from __future__ import annotations

import importlib
import io
import os
import random
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from queue import Empty, Queue
import pytest
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin, features

from pixsearch.ingest.descriptions import (
    MAX_KEYWORDS,
    MAX_TITLE_CHARS,
    Descriptions,
    embedded_descriptions,
    photos_for_sidecar,
    read_descriptions,
    sidecar_paths,
)
from helpers import NS, iim, utf16z, with_iptc, xmp_packet
from pixsearch.ingest.formats import (
    EXTRA_SUFFIXES,
    available_suffixes,
    companion_key,
    first_frame,
    register_extra_formats,
)
from pixsearch.ingest.metadata import camera_facts

# ======================================================================================================================
# fixture builders
# ======================================================================================================================

def photo_bytes(fmt: str = "JPEG", *, exif: Image.Exif | None = None, xmp: bytes | None = None,
                size=(48, 32), **save) -> bytes:
    buf = io.BytesIO()
    if exif is not None:
        save["exif"] = exif.tobytes()
    if xmp is not None:
        save["xmp"] = xmp
    Image.new("RGB", size, (90, 140, 200)).save(buf, fmt, **save)
    return buf.getvalue()


def open_bytes(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


# ======================================================================================================================
# XMP
# ======================================================================================================================


def test_embedded_xmp_in_jpeg_reads_title_description_keywords_hierarchy_and_date():
    packet = xmp_packet(title="Cat on the sofa", title_de="Katze auf dem Sofa", description="Our cat Mia, asleep.",
                        subjects=["cat", "Sofa", "CAT"], hierarchical=["Animals|Mammals|Cat", "Places|Home"],
                        date="2021-07-14T10:30:00+02:00")
    found = embedded_descriptions(open_bytes(photo_bytes(xmp=packet)))
    assert found.title == "Cat on the sofa"  # x-default wins over the first (German) entry
    assert found.description == "Our cat Mia, asleep."
    # case-insensitive de-dup, then every level of each hierarchy, leaf first
    assert found.keywords == ["cat", "Sofa", "Mammals", "Animals", "Home", "Places"]
    assert found.hierarchical == ["Animals|Mammals|Cat", "Places|Home"]
    assert found.taken_at == datetime(2021, 7, 14, 8, 30, tzinfo=timezone.utc)
    assert found.taken_at.utcoffset() == timedelta(hours=2) and found.taken_at_source == "xmp"
    assert found.sources == ["xmp"] and found.warnings == []


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP", "HEIF", "AVIF"])
def test_embedded_xmp_in_other_containers(fmt):
    formats = register_extra_formats()
    if fmt in ("HEIF", "AVIF") and fmt not in formats:
        pytest.skip(f"{fmt} is not available")
    packet = xmp_packet(title=f"{fmt} title", subjects=["harbour"])
    if fmt == "PNG":  # Pillow writes no XMP for PNG itself: the iTXt chunk Adobe specifies
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", packet.decode("utf-8"))
        data = photo_bytes("PNG", pnginfo=info)
    elif fmt == "TIFF":
        data = photo_bytes("TIFF", tiffinfo={700: packet})
    else:
        data = photo_bytes(fmt, xmp=packet)
    found = embedded_descriptions(open_bytes(data))
    assert (found.title, found.keywords, found.sources) == (f"{fmt} title", ["harbour"], ["xmp"])


def test_xmp_properties_as_attributes_digikam_tags_and_nested_titles():
    """Simple properties may be attributes; digiKam's TagsList uses '/'; a dc:title inside a structure (an artwork
    shown in the photo) is not the photo's title."""
    body = ('<digiKam:TagsList><rdf:Seq><rdf:li>Places/Europe/Lisbon</rdf:li></rdf:Seq></digiKam:TagsList>'
            '<Iptc4xmpExt:ArtworkOrObject xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
            '<rdf:Bag><rdf:li rdf:parseType="Resource"><dc:title><rdf:Alt><rdf:li xml:lang="x-default">Mona Lisa'
            '</rdf:li></rdf:Alt></dc:title></rdf:li></rdf:Bag></Iptc4xmpExt:ArtworkOrObject>')
    packet = xmp_packet(body=body).replace(b'rdf:about=""', b'rdf:about="" photoshop:Headline="Tram 28"')
    found = embedded_descriptions(open_bytes(photo_bytes(xmp=packet)))
    assert found.title == "Tram 28"
    assert found.hierarchical == ["Places|Europe|Lisbon"] and found.keywords == ["Lisbon", "Europe", "Places"]


# ======================================================================================================================
# IPTC, EXIF, comments
# ======================================================================================================================


def test_iptc_utf8_by_coded_character_set_and_latin1_without_it():
    utf8 = iim((1, 90, b"\x1b%G"), (2, 5, "Café de Flore".encode()), (2, 120, "Frühstück à Paris".encode()),
               (2, 25, b"paris"), (2, 25, "caf\u00e9".encode()), (2, 55, b"20190503"), (2, 60, b"083000+0200"))
    found = embedded_descriptions(open_bytes(with_iptc(photo_bytes(), utf8)))
    assert (found.title, found.description) == ("Café de Flore", "Frühstück à Paris")
    assert found.keywords == ["paris", "café"] and found.sources == ["iptc"]
    assert found.taken_at == datetime(2019, 5, 3, 6, 30, tzinfo=timezone.utc) and found.taken_at_source == "iptc"

    latin1 = iim((2, 120, "Smørrebrød in København".encode("latin-1")), (2, 25, "Øresund".encode("latin-1")))
    found = embedded_descriptions(open_bytes(with_iptc(photo_bytes(), latin1)))
    assert (found.description, found.keywords) == ("Smørrebrød in København", ["Øresund"])


def test_exif_xp_tags_image_description_and_user_comment():
    exif = Image.Exif()
    exif[0x9C9B] = utf16z("Sunset über dem Meer")  # XPTitle
    exif[0x010E] = "Sunset über dem Meer".encode()  # Windows copies the title here, as UTF-8
    exif[0x9C9C] = utf16z("Taken from the pier")  # XPComment
    exif[0x9C9E] = utf16z("sunset;sea; pier ;Sea")  # XPKeywords
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + "ignored: XPComment comes first".encode("utf-16-le")
    found = embedded_descriptions(open_bytes(photo_bytes(exif=exif)))
    assert found.title == "Sunset über dem Meer"
    assert found.description == "Taken from the pier"  # ImageDescription only repeats the title
    assert found.keywords == ["sunset", "sea", "pier"] and found.sources == ["exif"]


@pytest.mark.parametrize("comment,expected", [
    (b"UNICODE\x00" + "Grüße aus Köln".encode("utf-16-le"), "Grüße aus Köln"),
    (b"UNICODE\x00" + "Grüße aus Köln".encode("utf-16-be"), "Grüße aus Köln"),
    (b"ASCII\x00\x00\x00Hello pier\x00\x00", "Hello pier"),
    (b"\x00" * 8 + b"   \x00\x00  ", None),  # cameras' blank comment
    (b"ASCII\x00\x00\x00SONY DSC", None),  # camera junk
])
def test_exif_user_comment_character_codes(comment, expected):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment
    found = embedded_descriptions(open_bytes(photo_bytes(exif=exif)))
    assert found.description == expected


def test_camera_junk_descriptions_are_dropped():
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x010E] = "OLYMPUS IMAGING CORP.", "E-M10", "OLYMPUS DIGITAL CAMERA         "
    assert embedded_descriptions(open_bytes(photo_bytes(exif=exif))).description is None


def test_png_text_chunks_and_jpeg_comment():
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "Harbour at dawn")
    info.add_itxt("Description", "Fishing boats in Peniche")
    found = embedded_descriptions(open_bytes(photo_bytes("PNG", pnginfo=info)))
    assert (found.title, found.description, found.sources) == ("Harbour at dawn", "Fishing boats in Peniche",
                                                               ["comment"])
    found = embedded_descriptions(open_bytes(photo_bytes(comment=b"Grandma's 80th birthday")))
    assert found.description == "Grandma's 80th birthday"
    junk = embedded_descriptions(open_bytes(photo_bytes(comment=b"CREATOR: gd-jpeg v1.0 (using IJG JPEG v62)")))
    assert junk.description is None


# ======================================================================================================================
# sidecars and precedence
# ======================================================================================================================


def test_sidecar_paths_and_photos_for_sidecar(tmp_path):
    photo = str(tmp_path / "IMG_1.JPG")
    paths = sidecar_paths(photo)
    assert paths[:2] == [photo + ".xmp", str(tmp_path / "IMG_1.xmp")]
    assert str(tmp_path / "IMG_1.txt") in paths and photo + ".txt" in paths and photo not in paths
    write(tmp_path / "IMG_1.JPG", photo_bytes())
    write(tmp_path / "IMG_1.heic", b"")
    assert sorted(photos_for_sidecar(str(tmp_path / "IMG_1.xmp"))) == sorted([photo, str(tmp_path / "IMG_1.heic")])
    assert photos_for_sidecar(photo + ".xmp") == [photo]
    assert photos_for_sidecar(str(tmp_path / "other.txt")) == []


def test_precedence_xmp_sidecar_then_txt_then_embedded_xmp_iptc_exif(tmp_path):
    exif = Image.Exif()
    exif[0x9C9B], exif[0x9C9E] = utf16z("EXIF title"), utf16z("exif-kw;Shared")
    data = photo_bytes(exif=exif, xmp=xmp_packet(title="Embedded title", description="Embedded description",
                                                 subjects=["embedded-kw", "shared"]))
    data = with_iptc(data, iim((2, 5, b"IPTC title"), (2, 120, b"IPTC caption"), (2, 25, b"iptc-kw")))
    photo = write(tmp_path / "beach.jpg", data)
    # Only embedded metadata: XMP wins over IPTC over EXIF, keywords are the union in that order.
    found = read_descriptions(str(photo))
    assert (found.title, found.description) == ("Embedded title", "Embedded description")
    assert found.keywords == ["embedded-kw", "shared", "iptc-kw", "exif-kw"]
    assert found.sources == ["xmp", "iptc", "exif"]
    # A .txt sidecar beats embedded descriptions; an .xmp sidecar beats everything; photo.jpg.xmp beats photo.xmp.
    write(tmp_path / "beach.txt", "Written next to the photo.\n")
    write(tmp_path / "beach.xmp", xmp_packet(title="Generic sidecar title", subjects=["generic-sidecar-kw"]))
    write(tmp_path / "beach.jpg.xmp", xmp_packet(title="Sidecar title", subjects=["sidecar-kw"],
                                                 hierarchical=["Trips|Portugal"]))
    found = read_descriptions(str(photo), open_bytes(data))
    assert found.title == "Sidecar title"
    assert found.description == "Written next to the photo."
    assert found.keywords[:5] == ["sidecar-kw", "Portugal", "Trips", "generic-sidecar-kw", "embedded-kw"]
    assert found.hierarchical == ["Trips|Portugal"]
    assert found.sources == ["xmp-sidecar", "txt-sidecar", "xmp", "iptc", "exif"]
    assert "Sidecar title" in found.searchable_text() and found.warnings == []


def test_heic_metadata_through_pillow_heif(tmp_path):
    if "HEIF" not in register_extra_formats():
        pytest.skip("pillow-heif is not installed")
    exif = Image.Exif()
    exif[0x9C9E] = utf16z("iphone;live")
    exif.get_ifd(0x8769)[0x9003] = "2024:02:29 18:05:07"
    exif.get_ifd(0x8769)[0x9011] = "-05:00"
    photo = write(tmp_path / "IMG_0001.HEIC", photo_bytes("HEIF", exif=exif, xmp=xmp_packet(title="Snow day")))
    img = Image.open(photo)
    assert img.format == "HEIF"
    found = read_descriptions(str(photo), img)
    assert (found.title, found.keywords, found.sources) == ("Snow day", ["iphone", "live"], ["xmp", "exif"])
    facts = camera_facts(img.getexif())
    assert facts["taken_at"] == datetime(2024, 2, 29, 23, 5, 7, tzinfo=timezone.utc)
    assert facts["taken_at_source"] == "exif"


# ======================================================================================================================
# camera facts
# ======================================================================================================================


def test_camera_facts_with_offset_lens_orientation_and_gps_altitude():
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Canon", "Canon EOS R5", 6
    sub = exif.get_ifd(0x8769)
    sub[0x9003], sub[0x9011], sub[0x9291] = "2023:05:01 14:30:00", "+02:00", "25"
    sub[0xA433], sub[0xA434] = "Canon", "RF24-105mm F4 L IS USM"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4], gps[5], gps[6] = "S", (33.0, 51.0, 0.0), "E", (151.0, 12.0, 0.0), b"\x01", 12.5
    facts = camera_facts(open_bytes(photo_bytes(exif=exif)).getexif())
    assert facts["make"] == "Canon" and facts["model"] == "Canon EOS R5" and facts["camera"] == "Canon EOS R5"
    assert facts["lens"] == "RF24-105mm F4 L IS USM" and facts["lens_make"] == "Canon"
    assert facts["orientation"] == 6
    assert facts["taken_at"] == datetime(2023, 5, 1, 12, 30, 0, 250000, tzinfo=timezone.utc)
    assert facts["taken_at"].utcoffset() == timedelta(hours=2) and facts["taken_at_source"] == "exif"
    assert facts["gps_lat"] == pytest.approx(-33.85) and facts["gps_lon"] == pytest.approx(151.2)
    assert facts["gps_alt"] == pytest.approx(-12.5)


def test_camera_facts_date_time_pairs_with_offset_time():
    exif = Image.Exif()
    exif[0x0132] = "2020:03:01 10:00:00"
    exif.get_ifd(0x8769)[0x9010] = "-03:30"
    facts = camera_facts(open_bytes(photo_bytes(exif=exif)).getexif())
    assert facts["taken_at"] == datetime(2020, 3, 1, 13, 30, tzinfo=timezone.utc)
    assert facts["taken_at_source"] == "exif"


def test_camera_facts_without_offset_keep_wall_clock_labelled_utc():
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2023:05:01 14:30:00"
    exif[0x0132] = "2024:01:01 09:00:00"  # an editor's save time and zone: not the capture's
    exif.get_ifd(0x8769)[0x9010] = "+09:00"
    facts = camera_facts(open_bytes(photo_bytes(exif=exif)).getexif())
    assert facts["taken_at"] == datetime(2023, 5, 1, 14, 30, tzinfo=timezone.utc)
    assert facts["taken_at_source"] == "exif-no-offset"
    assert "gps_alt" not in facts and "lens" not in facts


@pytest.mark.parametrize("offset", ["   :  ", "+25:00", "garbage", "\x00\x00"])
def test_camera_facts_broken_offsets_and_dates(offset):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "0000:00:00 00:00:00"
    exif.get_ifd(0x8769)[0x9004] = "2020:02:30 10:00:00"  # no 30 February
    exif[0x0132] = "2020:03:01 10:00:00"
    exif.get_ifd(0x8769)[0x9010] = offset
    facts = camera_facts(open_bytes(photo_bytes(exif=exif)).getexif())
    assert facts["taken_at"] == datetime(2020, 3, 1, 10, tzinfo=timezone.utc)
    assert facts["taken_at_source"] == "exif-no-offset"


# ======================================================================================================================
# hostile content
# ======================================================================================================================

BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
                  + "".join(f'<!ENTITY {c} "{("&" + p + ";") * 10}">'
                            for p, c in zip("bcdefgh", "cdefghi", strict=True))
                  + ']><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF ' + NS + '><rdf:Description>'
                  '<dc:title><rdf:Alt><rdf:li xml:lang="x-default">&i;</rdf:li></rdf:Alt></dc:title>'
                  '</rdf:Description></rdf:RDF></x:xmpmeta>')
XXE = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY secret SYSTEM "file:///etc/passwd">]>'
       '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF ' + NS + '><rdf:Description><dc:description><rdf:Alt>'
       '<rdf:li xml:lang="x-default">&secret;</rdf:li></rdf:Alt></dc:description></rdf:Description></rdf:RDF>'
       '</x:xmpmeta>')


@pytest.mark.parametrize("payload", [
    BILLION_LAUGHS.encode(), XXE.encode(), b"\xff\xfe" + BILLION_LAUGHS.encode("utf-16-le"),
    BILLION_LAUGHS.encode("utf-16-le"),  # no BOM: decoded as UTF-8, NULs dropped, the DOCTYPE is still seen
], ids=["billion-laughs", "xxe", "utf16-bom", "utf16-no-bom"])
def test_xml_with_doctype_or_entities_is_refused_without_expansion(tmp_path, payload):
    photo = write(tmp_path / "p.jpg", photo_bytes(xmp=payload,
                                                  exif=_exif_title("still indexed")))
    write(tmp_path / "p.xmp", payload)
    started = time.perf_counter()
    found = read_descriptions(str(photo))
    assert time.perf_counter() - started < 1.0
    assert found.title == "still indexed" and found.sources == ["exif"]
    assert sum("refused" in w and "DOCTYPE" in w for w in found.warnings) == 2, found.warnings
    assert "lol" not in repr(found) and "root:" not in repr(found)


def _exif_title(title: str) -> Image.Exif:
    exif = Image.Exif()
    exif[0x9C9B] = utf16z(title)
    return exif


def test_nul_bytes_and_invalid_utf8_in_xmp_and_iptc_are_cleaned():
    packet = xmp_packet(title="PLACEHOLDER", subjects=["ok"]).replace(
        b"PLACEHOLDER", b"Caf\xc3\xa9 \x00bar \xff\xfe end\x07")
    found = embedded_descriptions(open_bytes(photo_bytes(xmp=packet)))
    assert found.title == "Café bar \ufffd\ufffd end" and found.keywords == ["ok"]
    block = iim((1, 90, b"\x1b%G"), (2, 5, b"Ti\x00tle \xc3("), (2, 25, b"\x00\x00"), (2, 25, b"good\x00kw"))
    found = embedded_descriptions(open_bytes(with_iptc(photo_bytes(), block)))
    assert found.title == "Title \ufffd(" and found.keywords == ["goodkw"]
    assert all("\x00" not in s for s in [found.title, *found.keywords])


def test_truncated_or_malformed_iptc_keeps_what_was_read():
    block = iim((2, 5, b"Kept title"), (2, 25, b"kept")) + b"\x1c\x02\x78\x01\xf4short"  # claims 500 bytes
    found = embedded_descriptions(open_bytes(with_iptc(photo_bytes(), block)))
    assert (found.title, found.keywords) == ("Kept title", ["kept"])
    assert any("truncated" in w for w in found.warnings)
    found = embedded_descriptions(open_bytes(with_iptc(photo_bytes(), iim((2, 25, b"a")) + b"\x99garbage")))
    assert found.keywords == ["a"] and any("malformed" in w for w in found.warnings)


def test_deep_nesting_and_broken_xml_do_not_raise():
    deep = xmp_packet(title="Deep").replace(b"</rdf:Description>", b"<a>" * 5000 + b"</rdf:Description>")
    found = embedded_descriptions(open_bytes(photo_bytes(xmp=deep)))
    assert found.title == "Deep" and any("nested deeper" in w for w in found.warnings)
    cut = xmp_packet(title="Cut short", subjects=["kw"])[:-60]
    found = embedded_descriptions(open_bytes(photo_bytes(xmp=cut)))
    assert found.title == "Cut short" and any("cut short" in w for w in found.warnings)
    found = embedded_descriptions(open_bytes(photo_bytes(xmp=b"not xml at all \x00\xff")))
    assert found.title is None and found.warnings


def test_limits_on_lengths_and_counts(tmp_path):
    packet = xmp_packet(title="T" * 5000, description="D" * 50_000,
                        subjects=[f"kw{i}" for i in range(1000)] + ["K" * 500])
    write(tmp_path / "a.xmp", packet)  # larger than a JPEG segment can hold: a sidecar
    found = read_descriptions(str(write(tmp_path / "a.jpg", photo_bytes())))
    assert len(found.title) == MAX_TITLE_CHARS and len(found.description) == 4000
    assert len(found.keywords) == MAX_KEYWORDS and all(len(k) <= 100 for k in found.keywords)


def test_huge_embedded_xmp_and_iptc_are_bounded():
    huge = xmp_packet(title="Huge", body="<dc:creator>" + "x" * 3_000_000 + "</dc:creator>")
    found = embedded_descriptions(open_bytes(photo_bytes("TIFF", tiffinfo={700: huge})))
    assert found.title is None and any("over the" in w for w in found.warnings)
    block = iim(*[(2, 25, b"kw%d" % i) for i in range(20_000)])
    started = time.perf_counter()
    found = embedded_descriptions(open_bytes(photo_bytes("TIFF", tiffinfo={33723: block})))
    assert time.perf_counter() - started < 1.0
    assert len(found.keywords) == MAX_KEYWORDS and any("more than" in w for w in found.warnings)


def test_huge_fifo_binary_and_symlinked_sidecars_are_bounded(tmp_path):
    photo = write(tmp_path / "a.jpg", photo_bytes())
    write(tmp_path / "a.txt", "x" * 2_000_000)
    write(tmp_path / "a.jpg.xmp", xmp_packet(title="t" * 10) + b" " * 2_000_000)
    found = read_descriptions(str(photo))
    assert found.title is None and found.description is None
    assert sum("larger than" in w for w in found.warnings) == 2, found.warnings

    photo = write(tmp_path / "b.jpg", photo_bytes())
    os.mkfifo(tmp_path / "b.txt")
    started = time.perf_counter()
    found = read_descriptions(str(photo))
    assert time.perf_counter() - started < 1.0 and any("FIFO" in w for w in found.warnings)

    photo = write(tmp_path / "c.jpg", photo_bytes())
    write(tmp_path / "c.jpg.txt", bytes(range(256)) * 10)
    assert any("binary" in w for w in read_descriptions(str(photo)).warnings)

    secret = write(tmp_path / "secret.key", "-----BEGIN PRIVATE KEY-----")
    photo = write(tmp_path / "d.jpg", photo_bytes())
    os.symlink(secret, tmp_path / "d.txt")
    found = read_descriptions(str(photo))
    assert found.description is None and any("symbolic link" in w for w in found.warnings)
    assert read_descriptions(str(photo), follow_symlinks=True).description == "-----BEGIN PRIVATE KEY-----"


def test_unreadable_photo_and_broken_exif_values_do_not_raise(tmp_path):
    found = read_descriptions(str(write(tmp_path / "junk.jpg", b"not an image")))
    assert isinstance(found, Descriptions) and found.warnings
    exif = Image.Exif()
    exif[0x9C9B] = b"\x41\x00\x42"  # odd length UTF-16
    exif[0x9C9E] = utf16z("ok;") + b"\xff\xfe\x00\xd8"  # a stray BOM and a lone surrogate after the NUL
    exif[0x9C9F] = b"\x00\xd8;\x00"  # XPSubject: a lone surrogate only
    exif.get_ifd(0x8769)[0x9286] = b"\x01\x02"
    found = embedded_descriptions(open_bytes(photo_bytes(exif=exif)))
    assert (found.title, found.keywords, found.description) == ("A", ["ok"], "\ufffd;")


# ======================================================================================================================
# formats
# ======================================================================================================================


def test_register_extra_formats_is_idempotent_and_heic_opens(tmp_path):
    first = register_extra_formats()
    assert register_extra_formats() is first
    assert ("HEIF" in first) == _importable("pillow_heif")
    assert ("AVIF" in first) == features.check("avif")  # Pillow's own libavif (the PyPI wheels have it)
    assert EXTRA_SUFFIXES == {".heic", ".heif", ".hif", ".avif"} and available_suffixes() <= EXTRA_SUFFIXES
    if "HEIF" not in first:
        pytest.skip("pillow-heif is not installed")
    path = write(tmp_path / "x.heic", photo_bytes("HEIF", size=(64, 48)))
    with Image.open(path) as img:
        assert (img.format, img.size) == ("HEIF", (64, 48))
        img.load()


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_first_frame_of_animations(fmt):
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    img = Image.open(io.BytesIO(buf.getvalue()))
    assert getattr(img, "is_animated", False)
    img.seek(2)
    assert first_frame(img) is img and img.tell() == 0
    r, g, b = img.convert("RGB").getpixel((8, 8))
    assert r > 200 and g < 50 and b < 50


def test_first_frame_of_a_heif_collection_is_the_primary_image():
    if "HEIF" not in register_extra_formats():
        pytest.skip("pillow-heif is not installed")
    buf = io.BytesIO()
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(buf, "HEIF", save_all=True, append_images=frames[1:], primary_index=1)
    img = Image.open(io.BytesIO(buf.getvalue()))
    img.seek(0)
    first_frame(img)
    assert img.info.get("primary") and img.convert("RGB").getpixel((8, 8))[2] > 200


@pytest.mark.parametrize("a,b", [
    ("/p/IMG_1234.HEIC", "/p/IMG_1234.MOV"),  # Live Photo
    ("/p/IMG_1234.HEIC", "/p/IMG_E1234.HEIC"),  # Apple edit
    ("/p/IMG_1234.JPG", "/p/IMG_1234_BURST0003.JPG"),
    ("/p/IMG_1234_BURST0001_COVER.JPG", "/p/IMG_1234_BURST0007.JPG"),
    ("/p/00000IMG_00000_BURST20180812172530123_COVER.jpg", "/p/00001IMG_00001_BURST20180812172530123.jpg"),
    ("/p/DSC_0001.NEF", "/p/DSC_0001.JPG"),  # RAW + JPEG
    ("/p/PXL_20210101_123456789.MP.jpg", "/p/PXL_20210101_123456789.jpg"),  # Pixel motion photo
    ("/p/photo.jpg", "/p/photo.jpg.xmp"),
    ("/p/IMG_1234.jpg", "/p/IMG_1234-edited.jpg"),  # Google Photos export
])
def test_companion_key_groups_one_shot(a, b):
    assert companion_key(a) == companion_key(b)


@pytest.mark.parametrize("a,b", [
    ("/p/IMG_1234.HEIC", "/q/IMG_1234.MOV"),  # other folder
    ("/p/IMG_1234.HEIC", "/p/IMG_1235.HEIC"),
    ("/p/holiday.2019.jpg", "/p/holiday.2020.jpg"),
    ("/p/00000IMG_00000_BURST20180812172530123.jpg", "/p/00000IMG_00000_BURST20190101000000000.jpg"),
])
def test_companion_key_keeps_other_shots_apart(a, b):
    assert companion_key(a) != companion_key(b)


# ======================================================================================================================
# folder watcher
# ======================================================================================================================


@pytest.fixture(scope="module")
def watch():
    return pytest.importorskip("pixsearch.ingest.watch", reason="watchdog is not installed", exc_type=ImportError)


def test_batch_folding_leaves_the_index_matching_the_folder(watch):
    """Model check of the folding rules: random create/modify/delete/move sequences (swaps, chains, overwrites),
    each batch applied as watch.py documents, must leave the index equal to the folder."""
    names = [f"/r/{c}.jpg" for c in "abcdefg"]
    for seed in range(3000):
        rnd = random.Random(seed)
        folder = {n: i for i, n in enumerate(names[:3])}
        index, content = dict(folder), 100
        for _ in range(rnd.randint(1, 4)):
            batch = watch._Batch()
            for _ in range(rnd.randint(1, 12)):
                op, path = rnd.choice("cmdv"), rnd.choice(names)
                if op in "cm":
                    content += 1
                    folder[path] = content
                    batch.change(path)
                elif op == "d" and path in folder:
                    del folder[path]
                    batch.delete(path)
                elif op == "v" and path in folder:
                    dest = rnd.choice([n for n in names if n != path])
                    folder[dest] = folder.pop(path)
                    batch.move(path, dest)
            changed, deleted, moved = batch.result()
            sources, dests = [s for s, _ in moved], [d for _, d in moved]
            assert not changed & deleted and not deleted & (set(sources) | set(dests)), seed
            assert len(set(sources)) == len(sources) and len(set(dests)) == len(dests), seed
            rows = {s: index.pop(s) for s in sources}
            for s, d in moved:
                index[d] = rows[s]
            for path in deleted:
                index.pop(path, None)
            for path in changed:
                index[path] = folder[path]
            assert index == folder, seed


class Recorder:
    """on_change that records batches and checks it is never entered twice at once."""

    def __init__(self, delay: float = 0.0):
        self.batches: Queue = Queue()
        self.active = self.max_active = 0
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, changed, deleted, moved):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.delay)
        self.batches.put((changed, deleted, moved))
        with self._lock:
            self.active -= 1

    def until(self, expected: tuple[set, set, list], timeout: float = 60.0) -> tuple[set, set, list]:
        """The batches delivered from now on, merged, once they add up to `expected` (changed, deleted, moved) or
        hold something it does not; what has been merged when `timeout` passes otherwise. One batch as a rule, but
        a busy machine may split a burst of changes, and how long delivery takes is no business of these tests."""
        deadline = time.monotonic() + timeout
        changed, deleted, moved = set(), set(), []
        while (changed, deleted, moved) != expected and changed <= expected[0] and deleted <= expected[1] \
                and all(m in expected[2] for m in moved) and time.monotonic() < deadline:
            try:
                c, d, m = self.batches.get(timeout=max(0.0, deadline - time.monotonic()))
            except Empty:
                break
            changed, deleted, moved = changed | c, deleted | d, moved + m
        return changed, deleted, moved


def test_folder_watcher_reports_debounced_batches(tmp_path, watch):
    root, outside = tmp_path / "photos", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "sub").mkdir()
    (root / "g").mkdir()
    (root / ".cache").mkdir()
    p = lambda name: str(root / name)  # noqa: E731
    record = Recorder()
    # watchdog's inotify backend holds a move-out ~0.5 s to pair it with a move-in, and what follows waits behind
    # it: a debounce shorter than that could split a batch (the merge in Recorder.next would hide it).
    with watch.FolderWatcher([root], record, debounce_s=0.6) as watcher:
        time.sleep(0.2)
        for name in ("a.jpg", "b.png", "a.jpg.xmp", "sub/d.webp", "g/h.HEIC", ".hidden.jpg", "c.jpg~", "notes.doc",
                     ".cache/x.jpg", "~tmp.jpg", "e.jpg.part"):
            write(root / name, b"data")
        expected = ({p("a.jpg"), p("b.png"), p("a.jpg.xmp"), p("sub/d.webp"), p("g/h.HEIC")}, set(), [])
        assert record.until(expected) == expected

        write(root / "a.jpg", b"more data")
        os.rename(root / "b.png", root / "e.png")
        os.remove(root / "sub/d.webp")
        write(root / ".f.jpg.tmp", b"x")
        os.replace(root / ".f.jpg.tmp", root / "f.jpg")  # an editor's atomic save
        expected = ({p("a.jpg"), p("f.jpg")}, {p("sub/d.webp")}, [(p("b.png"), p("e.png"))])
        assert record.until(expected) == expected

        os.rename(root / "g", root / "g2")  # a folder moved within the tree: one move per file
        os.rename(root / "sub", outside / "sub")  # a folder that left: reported as the folder
        write(root / "n.jpg", b"x")
        os.rename(root / "n.jpg", root / "m.jpg")  # written, then moved: read the new name, drop the old
        expected = ({p("m.jpg")}, {p("sub"), p("n.jpg")}, [(p("g/h.HEIC"), p("g2/h.HEIC"))])
        assert record.until(expected) == expected
    assert not watcher._observer.is_alive() and not watcher._worker.is_alive()
    assert record.batches.empty()  # nothing came twice, nor late
    assert record.max_active == 1


def test_folder_watcher_never_overlaps_callbacks_and_flushes_on_stop(tmp_path, watch):
    record = Recorder(delay=0.6)
    watcher = watch.FolderWatcher([tmp_path], record, debounce_s=0.1).start()
    time.sleep(0.2)
    write(tmp_path / "1.jpg", b"x")
    time.sleep(0.35)  # the first batch is being delivered (slowly) now
    write(tmp_path / "2.jpg", b"x")
    time.sleep(0.35)
    write(tmp_path / "3.jpg", b"x")
    time.sleep(0.2)
    watcher.stop()  # delivers what is pending without waiting, then joins
    seen = set()
    while not record.batches.empty():
        seen |= record.batches.get()[0]
    assert seen == {str(tmp_path / f"{i}.jpg") for i in (1, 2, 3)}
    assert record.max_active == 1


def test_folder_watcher_survives_a_failing_callback(tmp_path, watch):
    calls = Queue()

    def fails(changed, deleted, moved):
        calls.put(changed)
        raise RuntimeError("boom")

    with watch.FolderWatcher([tmp_path], fails, debounce_s=0.1):
        time.sleep(0.2)
        write(tmp_path / "a.jpg", b"x")
        assert calls.get(timeout=30) == {str(tmp_path / "a.jpg")}
        write(tmp_path / "b.jpg", b"x")
        assert calls.get(timeout=30) == {str(tmp_path / "b.jpg")}
    with pytest.raises(FileNotFoundError):
        watch.FolderWatcher([tmp_path / "missing"], fails).start()


# ======================================================================================================================
# OCR
# ======================================================================================================================

from pixsearch.ingest import ocr  # noqa: E402 - imports rapidocr only when a model is loaded
FONT_DIR = Path("/usr/share/fonts/truetype")
FONTS = {
    "DejaVuSans": FONT_DIR / "dejavu/DejaVuSans.ttf",
    "DejaVuSerif": FONT_DIR / "dejavu/DejaVuSerif.ttf",
    "LiberationMono": FONT_DIR / "liberation/LiberationMono-Regular.ttf",
    "pillow-default": None,  # ImageFont.load_default(size): the TrueType font built into Pillow
}
WORDS = {  # distinct words per size, so one image measures every size
    12: ["harbour", "lantern", "meadow", "copper", "violet", "saddle"],
    20: ["window", "garden", "bakery", "ticket", "island", "marble"],
    32: ["forest", "rocket", "camera", "yellow", "bridge", "pepper"],
}
ROTATIONS = (0, 90, 15)


@pytest.fixture(scope="module")
def reader():
    try:
        return ocr.TextReader().load()  # the model loads once for the module
    except ocr.OcrUnavailable as exc:
        pytest.skip(str(exc))


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path = FONTS[name]
    if path is None:
        return ImageFont.load_default(size)
    if not path.exists():
        pytest.skip(f"font {path} not on this machine")
    return ImageFont.truetype(str(path), size)


def _specimen(font_name: str, rotation: int) -> Image.Image:
    """Every size's words on one canvas (dark text, light warm background), then turned by `rotation` degrees."""
    background = (238, 232, 220)
    canvas = Image.new("RGB", (620, 330), background)
    draw, y = ImageDraw.Draw(canvas), 14
    for size, words in WORDS.items():
        font = _font(font_name, size)
        for line in (words[:3], words[3:]):
            draw.text((24, y), " ".join(line), fill=(25, 25, 30), font=font)
            y += int(size * 1.5)
        y += 12
    return canvas.rotate(rotation, expand=True, fillcolor=background, resample=Image.Resampling.BICUBIC)


def _found(text: str, word: str) -> bool:
    """The word as a whole token: glued words ("harbourlantern") are no use to a keyword search."""
    return word in re.findall(r"[a-z0-9]+", text.lower())


def test_ocr_recall_per_font_size_and_rotation(reader):
    rows, timings = [], []
    for font_name in FONTS:
        for rotation in ROTATIONS:
            image = _specimen(font_name, rotation)
            started = time.perf_counter()
            boxes = reader.read(image)
            timings.append(time.perf_counter() - started)
            text = ocr.joined_text(boxes)
            for size, words in WORDS.items():
                recall = sum(_found(text, w) for w in words) / len(words)
                rows.append((font_name, size, rotation, recall))
    print(f"\nOCR on {reader.threads} threads: {1000 * sum(timings) / len(timings):.0f} ms/image "
          f"(specimens {image.size[0]}x{image.size[1]} and smaller, min {1000 * min(timings):.0f}, "
          f"max {1000 * max(timings):.0f})")
    print("recall  font            " + "  ".join(f"{s:>2}px/{r:>2}°" for s in WORDS for r in ROTATIONS))
    for font_name in FONTS:
        cells = {(s, r): rec for f, s, r, rec in rows if f == font_name}
        print(f"        {font_name:<15} " + "  ".join(f"{cells[s, r]:>9.2f}" for s in WORDS for r in ROTATIONS))

    def by(size=None, rot=None) -> list[float]:
        return [rec for _, s, r, rec in rows if size in (None, s) and rot in (None, r)]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    assert mean(by(rot=0)) >= 0.9
    assert min(by(size=20, rot=0) + by(size=32, rot=0)) >= 0.8
    assert mean(by(rot=90)) >= 0.75  # the quarter-turn re-read is what makes this pass
    assert mean(by(size=20, rot=15) + by(size=32, rot=15)) >= 0.8


def test_ocr_boxes_map_back_to_the_given_image_after_downscaling(reader):
    image = Image.new("RGB", (4800, 1200), "white")
    draw = ImageDraw.Draw(image)
    font = _font("DejaVuSans", 160)
    draw.text((2600, 500), "LIGHTHOUSE", fill="black", font=font)
    x0, y0, x1, y1 = draw.textbbox((2600, 500), "LIGHTHOUSE", font=font)
    started = time.perf_counter()
    boxes = reader.read(image)
    print(f"\nOCR 4800x1200 (downscaled to {reader.max_side} px): {1000 * (time.perf_counter() - started):.0f} ms")
    match = [b for b in boxes if "lighthouse" in b.text.lower()]
    assert match, boxes
    bx0, by0, bx1, by1 = match[0].box
    # The detector pads its boxes (unclip ratio 1.6): the box holds the glyphs, centred, at most ~2.5x their area.
    assert bx0 <= x0 + 8 and by0 <= y0 + 8 and bx1 >= x1 - 8 and by1 >= y1 - 8, (match[0].box, (x0, y0, x1, y1))
    assert abs((bx0 + bx1) - (x0 + x1)) / 2 < 40 and abs((by0 + by1) - (y0 + y1)) / 2 < 40
    assert (bx1 - bx0) * (by1 - by0) < 2.5 * (x1 - x0) * (y1 - y0)
    assert 0 <= bx0 < bx1 <= 4800 and 0 <= by0 < by1 <= 1200 and 0.5 <= match[0].score <= 1.0


def test_ocr_joined_text_reading_order_and_empty_images(reader):
    boxes = [ocr.TextBox("world", 0.9, (120, 10, 200, 30)), ocr.TextBox("hello", 0.9, (10, 12, 100, 32)),
             ocr.TextBox("second line", 0.9, (10, 50, 150, 70))]
    assert ocr.joined_text(boxes) == "hello world\nsecond line"
    assert reader.read(Image.new("RGB", (300, 200), "white")) == []
    assert reader.read(Image.new("L", (2, 2))) == []
    rgba = Image.new("RGBA", (400, 120), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).text((20, 30), "Transparent", fill=(0, 0, 0, 255), font=_font("DejaVuSans", 40))
    assert "transparent" in ocr.joined_text(reader.read(rgba)).lower()
