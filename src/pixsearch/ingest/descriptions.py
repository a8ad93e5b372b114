"""What people wrote about a photo — titles, captions, keywords — from every place other tools put it.

Photo managers disagree on where a caption lives: Lightroom and darktable write XMP (embedded, or in a `.xmp` sidecar
next to the file), news agencies and older tools write IPTC IIM, Windows Explorer writes EXIF XP* tags, scrapers and
dataset tools write a plain `.txt` next to the photo, and some software leaves a JPEG/PNG/GIF comment. This module
reads all of them and merges them into one `Descriptions`.

Precedence (highest first) for the single-valued fields `title`, `description` and `taken_at`:

    1. xmp-sidecar   photo.jpg.xmp, then photo.xmp  — where DAMs write edits without touching the original
    2. txt-sidecar   photo.jpg.txt, then photo.txt  — a caption someone put next to the photo on purpose
    3. xmp           XMP embedded in the file
    4. iptc          IPTC IIM (legacy; when both exist, XMP is the newer copy — the MWG guidance)
    5. exif          XPTitle / ImageDescription / XPComment / XPSubject / UserComment
    6. comment       PNG Title/Description/Comment text chunks, JPEG COM and GIF comments (often software junk)

The first source that has a value wins, field by field. `keywords` and `hierarchical` are the union of all sources in
that order, de-duplicated case-insensitively with the first spelling kept; every level of a hierarchical keyword
("Animals|Mammals|Cat" -> "Cat", "Mammals", "Animals") is also a keyword, since that is what people search and
filter for (a photo tagged Places|Portugal|Lisbon is in Portugal too).

Everything read from a file is untrusted: XML with a DOCTYPE or entity declaration is refused before anything is
expanded, nesting and element counts are bounded, sidecars are read with decode.read_file (regular files only, at most
1 MB, symbolic links refused unless asked for), and every string goes through metadata.clean_text with a length limit.
Nothing here raises for bad content: what could be read is returned, and what could not is listed in `warnings`.
"""
from __future__ import annotations

import os
import re
import warnings as _warnings
from xml.parsers import expat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence
from xml.etree.ElementTree import Element, TreeBuilder

from PIL import Image

from pixsearch.ingest.decode import DecodeError, read_file
from pixsearch.ingest.formats import EXTRA_SUFFIXES, IMAGE_SUFFIXES, open_image
from pixsearch.ingest.metadata import clean_text, exif_ifd, exif_value, utc_offset

# -- limits -----------------------------------------------------------------------------------------------------------
MAX_TITLE_CHARS = 256
MAX_DESCRIPTION_CHARS = 4000
MAX_KEYWORD_CHARS = 100
MAX_KEYWORDS = 200
MAX_HIERARCHICAL_CHARS = 256  # a whole "A|B|C" path
MAX_SIDECAR_BYTES = 1_000_000
MAX_XMP_CHARS = 2_000_000  # embedded XMP larger than any sidecar may be, but not without bound
MAX_XML_DEPTH = 100  # real XMP nests < 10 deep
MAX_XML_ELEMENTS = 50_000
MAX_IIM_FIELDS = 5_000  # a caption, a title and 200 keywords need a few hundred
_MAX_WARNINGS = 20

SIDECAR_SUFFIXES = (".xmp", ".txt")
SOURCES = ("xmp-sidecar", "txt-sidecar", "xmp", "iptc", "exif", "comment")  # precedence, highest first

# -- namespaces -------------------------------------------------------------------------------------------------------
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_DC = "{http://purl.org/dc/elements/1.1/}"
_LR = "{http://ns.adobe.com/lightroom/1.0/}"
_PHOTOSHOP = "{http://ns.adobe.com/photoshop/1.0/}"
_XMP = "{http://ns.adobe.com/xap/1.0/}"
_EXIF_NS = "{http://ns.adobe.com/exif/1.0/}"
_TIFF_NS = "{http://ns.adobe.com/tiff/1.0/}"
_DIGIKAM = "{http://www.digikam.org/ns/1.0/}"
# (property, how hierarchy is written) in order of preference within one XMP packet
_XMP_TITLES = (_DC + "title", _PHOTOSHOP + "Headline")
_XMP_DESCRIPTIONS = (_DC + "description", _EXIF_NS + "UserComment", _TIFF_NS + "ImageDescription")
_XMP_DATES = (_PHOTOSHOP + "DateCreated", _EXIF_NS + "DateTimeOriginal", _XMP + "CreateDate")
_XMP_HIERARCHIES = ((_LR + "hierarchicalSubject", "|"), (_DIGIKAM + "TagsList", "/"))

# -- EXIF tags --------------------------------------------------------------------------------------------------------
_EXIF_IFD = 0x8769
_IMAGE_DESCRIPTION, _MAKE, _MODEL = 0x010E, 0x010F, 0x0110
_XP_TITLE, _XP_COMMENT, _XP_KEYWORDS, _XP_SUBJECT = 0x9C9B, 0x9C9C, 0x9C9E, 0x9C9F
_USER_COMMENT = 0x9286
_TIFF_IPTC = 33723
_PHOTOSHOP_IPTC_RESOURCE = 0x0404

# Descriptions cameras and libraries write by default: they say nothing about the photo.
_JUNK_TEXT = re.compile(
    r"""^(?:
        (?:olympus|sony|konica\ minolta|minolta|leica|samsung|nikon|pentax|kodak|casio|fujifilm|panasonic)?
            \s*digital\ (?:still\ )?camera
      | sony\ dsc | exif_jpeg_picture | default | untitled | image | picture | photo | none | null | n/?a
      | dcim.* | creator:\ gd-jpeg.* | lead\ technologies.* | created\ with\ gimp | optimized\ by\ jpegmini.*
      | file\ written\ by\ adobe\ photoshop.* | applemark | intel\(r\)\ jpeg\ library.* | processed\ by\ ebay.*
      | [\W_]*
    )$""",
    re.IGNORECASE | re.VERBOSE,
)
# Characters XML 1.0 forbids (expat stops at the first): C0 controls but tab/LF/CR, and the non-characters.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_SPACES = re.compile(r"\s+")
_WORD = re.compile(r"(?:^|\s)[^\W\d_]{2,}[.,;:!?'\")]*(?=\s|$)")  # a word of letters only, between spaces
_NO_WORD = re.compile(r"^[\W_]*$")


@dataclass
class Descriptions:
    """Merged descriptive metadata of one photo. `sources` names the sources that contributed anything (see SOURCES,
    in precedence order); `taken_at` is the date a person or tool recorded in XMP/IPTC (a fallback for photos without
    EXIF dates), `taken_at_source` says from where and whether it carried a UTC offset."""

    title: str | None = None
    description: str | None = None
    keywords: list[str] = field(default_factory=list)
    hierarchical: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    taken_at: datetime | None = None
    taken_at_source: str | None = None
    warnings: list[str] = field(default_factory=list)

    def searchable_text(self) -> str:
        """Title, description and keywords as one text, for a full-text or embedding field."""
        return caption_text(self.title, self.description, self.keywords)


def caption_text(title: str | None, description: str | None, keywords: Iterable[str] | None) -> str:
    """The one text a photo's caption is: its title, description and keywords, one per line."""
    keywords = list(keywords or ())
    parts = [title, description, ", ".join(keywords) if keywords else None]
    return "\n".join(p for p in parts if p)


GENERATED_CAPTION_FIELDS = ("generated_title", "generated_description", "generated_keywords")


def with_generated(text: str, generated: Mapping[str, Any] | None) -> str:
    """A photo's caption text (what people wrote) followed by its generated caption (a row's generated_title,
    generated_description, generated_keywords): the text its caption vector is made from."""
    if not generated:
        return text
    more = caption_text(*(generated.get(name) for name in GENERATED_CAPTION_FIELDS))
    return "\n".join(part for part in (text, more) if part)


@dataclass
class _Found:
    """What one source yielded, already cleaned."""

    source: str
    title: str | None = None
    description: str | None = None
    keywords: list[str] = field(default_factory=list)
    hierarchical: list[str] = field(default_factory=list)
    taken_at: datetime | None = None
    taken_at_source: str | None = None

    def empty(self) -> bool:
        return not (self.title or self.description or self.keywords or self.hierarchical or self.taken_at)


class _Refused(ValueError):
    """XML this module will not parse (DTDs, entities, absurd nesting)."""


# ======================================================================================================================
# public entry points
# ======================================================================================================================


def sidecar_paths(path: str) -> list[str]:
    """Every sidecar file that read_descriptions looks at for `path`, existing or not, in precedence order:
    photo.jpg.xmp, photo.xmp, photo.jpg.txt, photo.txt (and .XMP/.TXT spellings). Ingest records their state to
    notice a sidecar that appears, changes or goes away."""
    base, _ = os.path.splitext(path)
    out: list[str] = []
    for suffix in SIDECAR_SUFFIXES:
        for spelled in (suffix, suffix.upper()):
            for candidate in (path + spelled, base + spelled):
                if candidate not in out and candidate != path:
                    out.append(candidate)
    return out


def is_sidecar_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in SIDECAR_SUFFIXES and not os.path.basename(name).startswith(".")


def photos_for_sidecar(sidecar: str, image_suffixes: Iterable[str] | None = None) -> list[str]:
    """The existing photos a sidecar belongs to (the inverse of sidecar_paths): `photo.jpg.xmp` -> photo.jpg;
    `photo.xmp` -> photo.jpg, photo.heic, ... (RAW+JPEG pairs share one). Used when a watcher reports a sidecar."""
    if image_suffixes is None:
        image_suffixes = IMAGE_SUFFIXES | EXTRA_SUFFIXES
    suffixes = {s.lower() for s in image_suffixes}
    base = os.path.splitext(sidecar)[0]
    candidates = []
    if os.path.splitext(base)[1].lower() in suffixes:
        candidates.append(base)
    for suffix in sorted(suffixes):
        candidates += [base + suffix, base + suffix.upper()]
    seen: set[tuple[int, int]] = set()
    found = []
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            found.append(candidate)
    return found


def read_descriptions(
    path: str,
    image: Image.Image | None = None,
    exif: Image.Exif | None = None,
    *,
    follow_symlinks: bool = False,
    sidecars: Sequence[tuple[str, bytes | DecodeError]] | None = None,
    data: bytes | None = None,
) -> Descriptions:
    """Titles, descriptions and keywords of the photo at `path` from its sidecars and its embedded metadata.

    `sidecars`: (name, bytes or why they could not be read) of the photo's sidecars, in sidecar_paths order, when
    the caller read them (ingest reads them with the photo: objects.read_sidecars); then no file is looked at. `data`: the
    photo's bytes, when the caller has them and gives no `image`.

    `image` should be the image as Image.open returned it (before convert/transpose: XMP, IPTC and comments live in
    its `info`); `exif` its EXIF (read from `image` when None). With no `image` the file is opened here (a bounded
    read, no pixels decoded). Sidecars that are symbolic links are refused unless `follow_symlinks`: a link in a
    shared folder must not publish, say, ~/.ssh/id_rsa as a photo caption."""
    found: list[_Found] = []
    warned: list[str] = []
    if sidecars is None:
        sidecars = read_sidecar_files(path, follow_symlinks=follow_symlinks)
    for name, content in sidecars:
        found += _sidecar(name, content, warned)
    if image is None:
        image = _open_for_metadata(path, warned, data)
    if image is not None:
        found += _embedded(image, exif, warned)
    elif exif is not None:
        found += _guarded("exif", warned, _from_exif, exif)
    return _merge(found, warned)


def embedded_descriptions(image: Image.Image, exif: Image.Exif | None = None) -> Descriptions:
    """Only what the file itself carries (XMP, IPTC, EXIF, comments): for uploads, which have no sidecars."""
    warned: list[str] = []
    return _merge(_embedded(image, exif, warned), warned)


# ======================================================================================================================
# merging
# ======================================================================================================================


def _merge(found: list[_Found], warned: list[str]) -> Descriptions:
    rank = {name: i for i, name in enumerate(SOURCES)}
    found = sorted((f for f in found if not f.empty()), key=lambda f: rank.get(f.source, len(rank)))  # stable
    out = Descriptions(warnings=warned[:_MAX_WARNINGS])
    keywords, hierarchical = _Unique(MAX_KEYWORDS), _Unique(MAX_KEYWORDS)
    for item in found:
        if item.source not in out.sources:
            out.sources.append(item.source)
        out.title = out.title or item.title
        out.description = out.description or item.description
        if out.taken_at is None and item.taken_at is not None:
            out.taken_at, out.taken_at_source = item.taken_at, item.taken_at_source
        for path in item.hierarchical:
            hierarchical.add(path)
        keywords.extend(item.keywords)
        keywords.extend(level for path in item.hierarchical for level in reversed(path.split("|")))
    out.keywords, out.hierarchical = keywords.items, hierarchical.items
    return out


class _Unique:
    """Insertion-ordered, case-insensitively unique, bounded."""

    def __init__(self, limit: int):
        self.items: list[str] = []
        self._seen: set[str] = set()
        self._limit = limit

    def add(self, value: str) -> None:
        key = value.casefold()
        if key not in self._seen and len(self.items) < self._limit:
            self._seen.add(key)
            self.items.append(value)

    def extend(self, values: Iterable[str]) -> None:
        for value in values:
            self.add(value)


def _guarded(source: str, warned: list[str], fn, *args) -> list[_Found]:
    """Run one reader; whatever it raises becomes a warning, never an exception for the caller."""
    try:
        result = fn(*args)
    except Exception as exc:  # noqa: BLE001 - metadata is a bonus: never lose the photo over it
        warned.append(f"{source}: not read: {type(exc).__name__}: {exc}"[:300])
        return []
    return [result] if result is not None else []


# ======================================================================================================================
# cleaning
# ======================================================================================================================


def _clean(text: str | None, limit: int, *, one_line: bool = False) -> str | None:
    """clean_text for text this module decoded itself. clean_text re-reads Latin-1-range strings as UTF-8 (right for
    Pillow's EXIF strings, wrong for text already decoded from Latin-1), so it gets UTF-8 bytes here; lone
    surrogates become U+FFFD."""
    if text is None:
        return None
    if one_line:
        text = _SPACES.sub(" ", text)
    return clean_text(text.encode("utf-8", "surrogatepass"), limit)


def _decode_guess(data: bytes) -> str:
    """Bytes of unknown encoding: a BOM decides, else UTF-8 if valid, else Windows-1252, else Latin-1."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", "replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", "replace")
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


def _pillow_text(value: Any) -> str | None:
    """A string Pillow gave us from a file: bytes are decoded by guess; a str in the Latin-1 range (Pillow decodes
    PNG tEXt and many tags as Latin-1) is re-read as UTF-8 only when that is valid, else kept as Latin-1."""
    if isinstance(value, (bytes, bytearray)):
        return _decode_guess(bytes(value))
    if isinstance(value, str):
        if not value.isascii() and max(value) <= "\xff":
            try:
                return value.encode("latin-1").decode("utf-8")
            except UnicodeDecodeError:
                return value
        return value
    return None


def _meaningful(text: str | None, *also_junk: str | None) -> str | None:
    if not text or _JUNK_TEXT.match(text.strip()):
        return None
    if any(j and text.strip().casefold() == j.strip().casefold() for j in also_junk):
        return None
    return text


def _keyword_list(values: Iterable[str | None]) -> list[str]:
    out = []
    for value in values:
        cleaned = _clean(value, MAX_KEYWORD_CHARS, one_line=True)
        if cleaned and not _NO_WORD.match(cleaned):  # "", "-", "\ufffd": nothing to search for
            out.append(cleaned)
        if len(out) >= MAX_KEYWORDS:
            break
    return out


def _hierarchy_list(values: Iterable[str | None], separator: str) -> list[str]:
    out = []
    for value in values:
        if not value:
            continue
        parts = [_clean(p, MAX_KEYWORD_CHARS, one_line=True) for p in value.split(separator)]
        path = "|".join(p.replace("|", "/") for p in parts if p)
        if path:
            out.append(path[:MAX_HIERARCHICAL_CHARS])
        if len(out) >= MAX_KEYWORDS:
            break
    return out


# ======================================================================================================================
# sidecars
# ======================================================================================================================


def read_sidecar_files(path: str, *, follow_symlinks: bool = False) -> list[tuple[str, bytes | DecodeError]]:
    """The sidecars of the photo at `path` that exist, as read_descriptions' `sidecars` takes them: (name, bytes or
    why they could not be read), in sidecar_paths order. For a caller that reads the files on one machine and
    describes the photo on another (ingest on a Ray cluster whose workers cannot see the folder)."""
    contents: list[tuple[str, bytes | DecodeError]] = []
    seen: set[tuple[int, int]] = set()
    for sidecar in sidecar_paths(path):
        try:
            st = os.stat(sidecar) if follow_symlinks else os.lstat(sidecar)
        except OSError:
            continue  # the usual case: no such sidecar
        if (st.st_dev, st.st_ino) in seen:  # .xmp and .XMP on a case-insensitive file system
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            data: bytes | DecodeError = read_file(sidecar, max_bytes=MAX_SIDECAR_BYTES, follow_symlinks=follow_symlinks)
        except DecodeError as exc:
            data = exc
        contents.append((os.path.basename(sidecar), data))
    return contents


def _sidecar(name: str, data: bytes | DecodeError, warned: list[str]) -> list[_Found]:
    if isinstance(data, DecodeError):
        warned.append(f"sidecar {name}: not read: {data}")
        return []
    if name.lower().endswith(".xmp"):
        return _xmp_source(data, "xmp-sidecar", f"sidecar {name}", warned)
    return _guarded(f"sidecar {name}", warned, _from_txt, data)


def _from_txt(data: bytes) -> _Found | None:
    text = _decode_guess(data)
    if text and sum(ch < " " and ch not in "\t\n\r" for ch in text) > len(text) // 10:
        raise ValueError("looks like binary data, not text")
    return _Found("txt-sidecar", description=_clean(text, MAX_DESCRIPTION_CHARS))


# ======================================================================================================================
# embedded metadata
# ======================================================================================================================


def _open_for_metadata(path: str, warned: list[str], data: bytes | None = None) -> Image.Image | None:
    if data is None:
        try:
            data = read_file(path)
        except DecodeError as exc:
            warned.append(f"file: not read: {exc}")
            return None
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            return open_image(data)  # headers and metadata only (HEIC/AVIF too): pixels are decoded on load()
    except Exception as exc:  # noqa: BLE001
        warned.append(f"file: not an image Pillow can open: {type(exc).__name__}")
        return None


def _embedded(image: Image.Image, exif: Image.Exif | None, warned: list[str]) -> list[_Found]:
    found: list[_Found] = []
    raw = _embedded_xmp(image)
    if raw:
        found += _xmp_source(raw, "xmp", "xmp", warned)
    found += _guarded("iptc", warned, _from_iptc, image, warned)
    if exif is None:
        try:
            exif = image.getexif()
        except Exception as exc:  # noqa: BLE001
            warned.append(f"exif: not read: {type(exc).__name__}")
            exif = None
    if exif is not None:
        found += _guarded("exif", warned, _from_exif, exif)
    found += _guarded("comment", warned, _from_comments, image)
    return found


def _embedded_xmp(image: Image.Image) -> bytes | str | None:
    """Where Pillow (and pillow-heif) leave an XMP packet: info["xmp"] for JPEG APP1, PNG iTXt XML:com.adobe.xmp,
    WebP, TIFF tag 700, GIF and HEIF/AVIF; older Pillow kept PNG's under its chunk keyword; TIFF also as tag 700.
    (Image.getxmp() needs defusedxml and returns a loosely typed dict, so the packet is parsed here instead.)"""
    info = getattr(image, "info", {}) or {}
    raw = info.get("xmp") or info.get("XML:com.adobe.xmp")
    if not raw:
        tags = getattr(image, "tag_v2", None)
        raw = tags.get(700) if tags is not None else None
    if isinstance(raw, tuple):  # TIFF tags of type BYTE come back as tuples from some writers
        raw = bytes(v for v in raw if isinstance(v, int) and 0 <= v < 256)
    return raw if isinstance(raw, (bytes, str)) and raw else None


# -- XMP --------------------------------------------------------------------------------------------------------------


def _xmp_source(data: bytes | str, source: str, label: str, warned: list[str]) -> list[_Found]:
    try:
        item, problem = _parse_xmp(data, source)
    except _Refused as exc:
        warned.append(f"{label}: refused: {exc}")
        return []
    except Exception as exc:  # noqa: BLE001 - not XML at all, or a bug: a warning, never a lost photo
        warned.append(f"{label}: not read: {type(exc).__name__}: {exc}"[:300])
        return []
    if problem:
        warned.append(f"{label}: {problem}")
    return [item]


def _parse_xmp(data: bytes | str, source: str = "xmp") -> tuple[_Found, str | None]:
    """One XMP packet -> (what it says, the problem that cut parsing short or None). DOCTYPE and ENTITY
    declarations are refused with _Refused before anything is expanded (no billion laughs, no external entities);
    forbidden control characters and invalid UTF-8 are cleaned before parsing; a packet cut short yields what was
    parsed before the break."""
    if len(data) > MAX_XMP_CHARS:  # checked before decoding: a TIFF tag can hold a lot
        raise _Refused(f"XMP packet of {len(data)} bytes is over the {MAX_XMP_CHARS} limit")
    text = _xmp_text(data)
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise _Refused("XMP with a DOCTYPE or ENTITY declaration is not parsed")
    root, problem = _parse_xml(text)
    return (_from_xmp_tree(root, source) if root is not None else _Found(source)), problem


def _xmp_text(data: bytes | str) -> str:
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data)
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            text = data.decode("utf-16", "replace")
        elif data.startswith(b"\xef\xbb\xbf"):
            text = data[3:].decode("utf-8", "replace")
        else:
            text = data.decode("utf-8", "replace")
    else:
        text = data.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> '?'
    text = _XML_FORBIDDEN.sub("", text)
    start, end = text.find("<"), text.rfind(">")
    return text[start : end + 1] if start >= 0 and end > start else ""


def _parse_xml(text: str) -> tuple[Element | None, str | None]:
    """expat straight into an ElementTree, refusing any DTD. Returns the root (possibly partial) and the problem
    that stopped parsing, if any. Parsing a str makes expat ignore the declared encoding (the text is decoded)."""
    builder = TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True
    state = {"depth": 0, "count": 0, "root": None}

    def qname(name: str) -> str:
        return "{" + name if "}" in name else name

    def start(name: str, attrs: dict[str, str]) -> None:
        state["depth"] += 1
        state["count"] += 1
        if state["depth"] > MAX_XML_DEPTH:
            raise _Refused(f"XML nested deeper than {MAX_XML_DEPTH} levels")
        if state["count"] > MAX_XML_ELEMENTS:
            raise _Refused(f"XML with more than {MAX_XML_ELEMENTS} elements")
        element = builder.start(qname(name), {qname(k): v for k, v in attrs.items()})
        if state["root"] is None:
            state["root"] = element

    def end(name: str) -> None:
        state["depth"] -= 1
        builder.end(qname(name))

    def refuse(*_args: Any) -> None:
        raise _Refused("XMP with a DOCTYPE or ENTITY declaration is not parsed")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    try:
        parser.Parse(text, True)
    except _Refused as exc:
        if "DOCTYPE" in str(exc):
            raise
        return state["root"], str(exc)
    except expat.ExpatError as exc:
        if state["root"] is None:
            raise ValueError(f"not XML: {exc}") from None
        return state["root"], f"XML cut short ({exc}): kept what was read before"
    return state["root"], None


def _from_xmp_tree(root: Element, source: str) -> _Found:
    """Read the top-level rdf:Description properties only: dc:title nested inside a structure (say, the title of an
    artwork shown in the photo) is not the photo's title."""
    props: dict[str, list[Element | str]] = {}
    for rdf in root.iter(_RDF + "RDF"):
        for desc in rdf.findall(_RDF + "Description"):
            for name, value in desc.attrib.items():  # simple properties written as attributes
                props.setdefault(name, []).append(value)
            for child in desc:
                props.setdefault(child.tag, []).append(child)
    item = _Found(source)
    for name in _XMP_TITLES:
        item.title = item.title or _clean(_first_alt(props.get(name)), MAX_TITLE_CHARS, one_line=True)
    for name in _XMP_DESCRIPTIONS:
        item.description = item.description or _clean(_first_alt(props.get(name)), MAX_DESCRIPTION_CHARS)
    item.keywords = _keyword_list(v for value in props.get(_DC + "subject", []) for v in _items(value))
    for name, separator in _XMP_HIERARCHIES:
        item.hierarchical += _hierarchy_list((v for value in props.get(name, []) for v in _items(value)), separator)
    for name in _XMP_DATES:
        for value in props.get(name, []):
            stamp = _items(value)
            parsed = _xmp_datetime(stamp[0] if stamp else None)
            if parsed is not None:
                item.taken_at, item.taken_at_source = parsed
                break
        if item.taken_at is not None:
            break
    return item


def _items(value: Element | str) -> list[str]:
    """A property's values: the rdf:li of an rdf:Bag/Seq/Alt (each li's text or its rdf:value), else its own text."""
    if isinstance(value, str):
        return [value]
    for container in ("Bag", "Seq", "Alt"):
        node = value.find(_RDF + container)
        if node is not None:
            return [t for t in (_li_text(li) for li in node.findall(_RDF + "li")) if t]
    text = (value.text or "").strip()
    if text:
        return [text]
    inner = value.find(".//" + _RDF + "value")
    return [inner.text.strip()] if inner is not None and inner.text and inner.text.strip() else []


def _li_text(li: Element) -> str | None:
    text = (li.text or "").strip()
    if text:
        return text
    inner = li.find(".//" + _RDF + "value")
    return inner.text.strip() if inner is not None and inner.text else None


def _first_alt(values: list[Element | str] | None) -> str | None:
    """A language alternative: x-default first, then the first non-empty entry."""
    for value in values or []:
        if isinstance(value, str):
            if value.strip():
                return value
            continue
        alt = value.find(_RDF + "Alt")
        if alt is None:
            items = _items(value)
            if items:
                return items[0]
            continue
        entries = alt.findall(_RDF + "li")
        for li in entries:
            if li.get(_XML_LANG, "").lower() == "x-default" and _li_text(li):
                return _li_text(li)
        for li in entries:
            if _li_text(li):
                return _li_text(li)
    return None


_XMP_DATE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?)?)?\s*"
    r"(Z|[+-]\d{2}:?\d{2})?$"
)


def _xmp_datetime(value: str | None) -> tuple[datetime, str] | None:
    """XMP dates are ISO 8601 of any precision ("2019", "2019-07-14T10:30:00+02:00"). Without a zone the
    wall-clock time is labelled UTC and the source says so."""
    text = _clean(value, 64, one_line=True)
    match = _XMP_DATE.match(text or "")
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        stamp = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                         int(second or 0), int((fraction or "0")[:6].ljust(6, "0")))
    except ValueError:
        return None
    if year == "0000":
        return None
    offset = utc_offset(zone) if zone else None
    if offset is None:
        return stamp.replace(tzinfo=timezone.utc), "xmp-no-offset"
    return stamp.replace(tzinfo=offset), "xmp"


# -- IPTC IIM ---------------------------------------------------------------------------------------------------------


def _iptc_block(image: Image.Image) -> bytes | None:
    """The raw IIM bytes: JPEG APP13 Photoshop resource 0x0404 (Pillow keeps it in info["photoshop"]) or TIFF tag
    33723. Pillow's IptcImagePlugin.getiptcinfo finds the same block but raises on the first malformed field and
    loses everything read before it (and takes no charset into account), so the block is parsed here."""
    photoshop = (getattr(image, "info", {}) or {}).get("photoshop")
    if isinstance(photoshop, dict) and isinstance(photoshop.get(_PHOTOSHOP_IPTC_RESOURCE), bytes):
        return photoshop[_PHOTOSHOP_IPTC_RESOURCE]
    tags = getattr(image, "tag_v2", None)
    if tags is not None:
        # Photoshop types the tag as LONG, so Pillow's decoded value is a tuple of integers in the file's byte
        # order; the undecoded bytes are what IIM needs (getiptcinfo reads the same private field).
        raw = getattr(tags, "_tagdata", {}).get(_TIFF_IPTC)
        if raw is None:
            raw = exif_value(tags, _TIFF_IPTC)
        if isinstance(raw, bytes):
            return raw
    return None


def _iim_fields(data: bytes) -> tuple[list[tuple[int, int, bytes]], str | None]:
    """(record, dataset, value) of an IIM block, with the problem that stopped reading it, if any."""
    fields: list[tuple[int, int, bytes]] = []
    pos = 0
    while pos + 5 <= len(data):
        if len(fields) >= MAX_IIM_FIELDS:
            return fields, f"IPTC block has more than {MAX_IIM_FIELDS} fields: kept the first ones"
        if data[pos] != 0x1C:
            if any(data[pos:]):
                return fields, f"IPTC block malformed at byte {pos}: kept {len(fields)} fields"
            break  # zero padding at the end
        record, dataset, size = data[pos + 1], data[pos + 2], int.from_bytes(data[pos + 3 : pos + 5], "big")
        pos += 5
        if size & 0x8000:  # extended dataset: the next (size & 0x7FFF) bytes hold the length
            width = size & 0x7FFF
            if width > 4 or pos + width > len(data):
                return fields, f"IPTC block malformed at byte {pos}: kept {len(fields)} fields"
            size, pos = int.from_bytes(data[pos : pos + width], "big"), pos + width
        if pos + size > len(data):
            return fields, f"IPTC block truncated: kept {len(fields)} fields"
        fields.append((record, dataset, data[pos : pos + size]))
        pos += size
    return fields, None


def _from_iptc(image: Image.Image, warned: list[str]) -> _Found | None:
    data = _iptc_block(image)
    if not data:
        return None
    fields, problem = _iim_fields(data)
    if problem:
        warned.append(f"iptc: {problem}")
    if not fields:
        return None
    # 1:90 Coded Character Set: ESC % G is UTF-8. Without it: UTF-8 when valid, else Windows-1252/Latin-1 (what
    # exiftool assumes for IPTC without a character set).
    utf8 = any(r == 1 and d == 90 and b"\x1b%G" in v for r, d, v in fields)

    def text(value: bytes) -> str:
        return value.decode("utf-8", "replace") if utf8 else _decode_guess(value)

    values: dict[int, list[str]] = {}
    for record, dataset, value in fields:
        if record == 2:
            values.setdefault(dataset, []).append(text(value))

    def first(dataset: int) -> str | None:
        return next((v for v in values.get(dataset, []) if v.strip()), None)

    item = _Found("iptc")
    item.title = _clean(first(5), MAX_TITLE_CHARS, one_line=True) or _clean(first(105), MAX_TITLE_CHARS, one_line=True)
    item.description = _clean(first(120), MAX_DESCRIPTION_CHARS)
    item.keywords = _keyword_list(values.get(25, []))
    date = _iptc_datetime(first(55), first(60))
    if date is not None:
        item.taken_at, item.taken_at_source = date
    return item


def _iptc_datetime(date: str | None, time: str | None) -> tuple[datetime, str] | None:
    """2:55 DateCreated CCYYMMDD and 2:60 TimeCreated HHMMSS±HHMM."""
    if not date or not re.fullmatch(r"\d{8}", date.strip()):
        return None
    d = date.strip()
    match = re.fullmatch(r"(\d{2})(\d{2})(\d{2})([+-]\d{4})?", (time or "").strip())
    hour, minute, second = (int(g) for g in match.groups()[:3]) if match else (0, 0, 0)
    try:
        stamp = datetime(int(d[:4]), int(d[4:6]), int(d[6:8]), hour, minute, second)
    except ValueError:
        return None
    offset = utc_offset(match.group(4)) if match and match.group(4) else None
    if offset is None:
        return stamp.replace(tzinfo=timezone.utc), "iptc-no-offset"
    return stamp.replace(tzinfo=offset), "iptc"


# -- EXIF -------------------------------------------------------------------------------------------------------------


def _from_exif(exif: Image.Exif) -> _Found | None:
    """Windows Explorer writes Title to XPTitle *and* ImageDescription, Subject to XPSubject, Comments to
    XPComment and Tags to XPKeywords; cameras fill ImageDescription with their own name. So: the title is XPTitle;
    the description is ImageDescription unless it is camera junk or repeats the title, else XPComment, XPSubject,
    UserComment."""
    sub = exif_ifd(exif, _EXIF_IFD)
    title = _clean(_xp_text(exif_value(exif, _XP_TITLE)), MAX_TITLE_CHARS, one_line=True)
    make, model = clean_text(exif_value(exif, _MAKE)), clean_text(exif_value(exif, _MODEL))
    image_description = clean_text(exif_value(exif, _IMAGE_DESCRIPTION), MAX_DESCRIPTION_CHARS)
    candidates = [
        _meaningful(image_description, title, make, model, f"{make or ''} {model or ''}"),
        _clean(_xp_text(exif_value(exif, _XP_COMMENT)), MAX_DESCRIPTION_CHARS),
        _clean(_xp_text(exif_value(exif, _XP_SUBJECT)), MAX_DESCRIPTION_CHARS),
        _meaningful(_clean(_user_comment(sub.get(_USER_COMMENT)), MAX_DESCRIPTION_CHARS)),
    ]
    description = next((c for c in candidates if c), None)
    keywords = _keyword_list((_xp_text(exif_value(exif, _XP_KEYWORDS)) or "").split(";"))
    return _Found("exif", title=title, description=description, keywords=keywords)


def _as_bytes(value: Any) -> bytes | None:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, tuple) and all(isinstance(v, int) and 0 <= v < 256 for v in value):
        return bytes(value)
    return None


def _xp_text(value: Any) -> str | None:
    """XP* tags: UTF-16LE bytes, NUL-terminated."""
    if isinstance(value, str):
        return value
    data = _as_bytes(value)
    if not data:
        return None
    if len(data) % 2:
        data = data[:-1]
    return data.decode("utf-16-le", "replace").split("\x00", 1)[0].lstrip("\ufeff")


def _user_comment(value: Any) -> str | None:
    """UserComment: an 8-byte character-code header (ASCII, UNICODE, JIS or undefined) before the text. UNICODE is
    UCS-2 in the file's byte order; which one is guessed from where the zero bytes of Latin text fall."""
    if isinstance(value, str):
        return value
    data = _as_bytes(value)
    if not data:
        return None
    header, body = data[:8], data[8:]
    if header == b"UNICODE\x00":
        if body.startswith((b"\xff\xfe", b"\xfe\xff")):
            text = body.decode("utf-16", "replace")
        else:
            body = body[: len(body) - len(body) % 2]
            little = body[1::2].count(0) >= body[0::2].count(0)
            text = body.decode("utf-16-le" if little else "utf-16-be", "replace")
    elif header == b"JIS\x00\x00\x00\x00\x00":
        text = body.decode("shift_jis", "replace")
    elif header in (b"ASCII\x00\x00\x00", b"\x00" * 8):
        text = _decode_guess(body)
    else:  # no header: some writers just put text here
        text = _decode_guess(data)
    return text.replace("\x00", " ").strip()


# -- comments ---------------------------------------------------------------------------------------------------------


def _from_comments(image: Image.Image) -> _Found | None:
    """PNG text chunks (Title, Description, Comment) and JPEG COM / GIF comment extensions."""
    info = getattr(image, "info", {}) or {}
    title = _clean(_meaningful(_pillow_text(info.get("Title"))), MAX_TITLE_CHARS, one_line=True)
    description = None
    for key in ("Description", "comment", "Comment"):
        text = _meaningful(_pillow_text(info.get(key)))
        if text and _WORD.search(text):  # encoders sign here too: "cmp3.10.3.2Lq3 0x756ffbf7" is not a caption
            description = description or _clean(text, MAX_DESCRIPTION_CHARS)
    if not (title or description):
        return None
    return _Found("comment", title=title, description=description)
