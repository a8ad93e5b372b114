"""Test data the tests make themselves: altered copies of sample photos, broken files, and photo metadata as other
tools write it (XMP, IPTC, EXIF XP* tags)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image


def altered_copy(source: Path, dest: Path) -> Path:
    """Resize to 60%, crop 10% off each side and recompress as a low-quality JPEG: the same photo, other bytes."""
    img = Image.open(source).convert("RGB")
    w, h = img.size
    img = img.resize((int(w * 0.6), int(h * 0.6)), Image.Resampling.BILINEAR)
    w, h = img.size
    img = img.crop((int(w * 0.1), int(h * 0.1), int(w * 0.9), int(h * 0.9)))
    img.save(dest, "JPEG", quality=55)
    return dest


def broken_files(folder: Path) -> dict[str, Path]:
    """A truncated JPEG, a text file named .jpg and an empty .png."""
    folder.mkdir(parents=True, exist_ok=True)
    truncated = folder / "truncated.jpg"
    good = folder / "_tmp_good.jpg"
    Image.new("RGB", (640, 480), (10, 120, 200)).save(good, "JPEG")
    data = good.read_bytes()
    good.unlink()
    truncated.write_bytes(data[: len(data) // 3])
    text = folder / "notes.jpg"
    text.write_text("shopping list: eggs, milk\n")
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    return {"truncated": truncated, "text": text, "empty": empty}


def copy_some(samples: Path, dest: Path, names: list[str]) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(samples / name, dest / name)) for name in names]


def noise_images(folder: Path, count: int, height: int, width: int, *, seed: int,
                 name: str = "p{:03d}.png") -> list[Path]:
    """`count` images of random pixels, all different (each one is embedded), named by `name`.format(i)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [folder / name.format(i) for i in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return paths



def read_page_link(proc: subprocess.Popen) -> tuple[str, str, str]:
    """Read a `pixsearch serve` / `demo --serve` process's stderr up to the page link it prints: its base URL, the
    session key, and all stderr read so far."""
    lines: list[str] = []
    while not lines or "search page:" not in lines[-1]:
        lines.append(proc.stderr.readline())
        assert lines[-1] or proc.poll() is None, "exited before printing the link:\n" + "".join(lines)
    base, key = re.search(r"search page: (http://127\.0\.0\.1:\d+/)#key=(\S+)", lines[-1]).groups()
    return base, key, "".join(lines)


# The browser tests drive Debian's Chromium with Playwright (its own browser download cannot work offline); the
# flags keep it from reaching for the network, which is closed here.
CHROMIUM = os.environ.get("PIXSEARCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium_browser() -> Iterator[object]:
    """A headless Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM):
        raise RuntimeError(f"Chromium not found at {CHROMIUM}: apt-get install chromium (or set PIXSEARCH_CHROMIUM)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# -- photo metadata as other tools write it --------------------------------------------------------------------------
NS = ('xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:dc="http://purl.org/dc/elements/1.1/" '
      'xmlns:lr="http://ns.adobe.com/lightroom/1.0/" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" '
      'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:digiKam="http://www.digikam.org/ns/1.0/"')


def xmp_packet(*, title: str | None = None, title_de: str | None = None, description: str | None = None,
               subjects=(), hierarchical=(), date: str | None = None, body: str = "") -> bytes:
    """An XMP packet as Lightroom/darktable write it: one rdf:Description, dc:title/description as rdf:Alt (a German
    entry first, to check that x-default wins), dc:subject and lr:hierarchicalSubject as rdf:Bag."""
    props = []
    if title is not None or title_de is not None:
        lis = ""
        if title_de is not None:
            lis += f'<rdf:li xml:lang="de-DE">{escape(title_de)}</rdf:li>'
        if title is not None:
            lis += f'<rdf:li xml:lang="x-default">{escape(title)}</rdf:li>'
        props.append(f"<dc:title><rdf:Alt>{lis}</rdf:Alt></dc:title>")
    if description is not None:
        props.append(f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(description)}</rdf:li>'
                     "</rdf:Alt></dc:description>")
    if subjects:
        props.append("<dc:subject><rdf:Bag>" + "".join(f"<rdf:li>{escape(s)}</rdf:li>" for s in subjects)
                     + "</rdf:Bag></dc:subject>")
    if hierarchical:
        props.append("<lr:hierarchicalSubject><rdf:Bag>"
                     + "".join(f"<rdf:li>{escape(h)}</rdf:li>" for h in hierarchical)
                     + "</rdf:Bag></lr:hierarchicalSubject>")
    date_attr = f' photoshop:DateCreated="{date}"' if date else ""
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF {NS}>'
            f'<rdf:Description rdf:about=""{date_attr}>{"".join(props)}{body}</rdf:Description>'
            '</rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>').encode("utf-8")


def iim(*fields: tuple[int, int, bytes]) -> bytes:
    """An IPTC IIM block: 0x1C, record, dataset, 2-byte big-endian length, value."""
    return b"".join(b"\x1c" + bytes([r, d]) + len(v).to_bytes(2, "big") + v for r, d, v in fields)


def with_iptc(jpeg: bytes, block: bytes) -> bytes:
    """Splice a Photoshop APP13 segment holding `block` as image resource 0x0404 after the JPEG's APP0/APP1."""
    resource = b"8BIM" + (0x0404).to_bytes(2, "big") + b"\x00\x00" + len(block).to_bytes(4, "big") + block
    resource += b"\x00" * (len(block) % 2)
    payload = b"Photoshop 3.0\x00" + resource
    segment = b"\xff\xed" + (len(payload) + 2).to_bytes(2, "big") + payload
    pos = 2
    while jpeg[pos] == 0xFF and jpeg[pos + 1] in (0xE0, 0xE1):
        pos += 2 + int.from_bytes(jpeg[pos + 2: pos + 4], "big")
    return jpeg[:pos] + segment + jpeg[pos:]


def utf16z(text: str) -> bytes:
    return text.encode("utf-16-le") + b"\x00\x00"


def capabilities_json(capabilities) -> dict:
    """A ModelCapabilities as plain JSON (what a fresh process can print and a test compare)."""
    relevance = capabilities.relevance
    return {
        "name": capabilities.name, "model_id": capabilities.model_id,
        "spaces": {key: [s.name, s.dims, s.metric, s.model_id] for key, s in capabilities.spaces.items()},
        "text_space": capabilities.text_space, "image_space": capabilities.image_space,
        "photo_fields": [dict(vars(f)) for f in capabilities.photo_fields],
        "relevance": None if relevance is None else [relevance.threshold, relevance.how],
        "caption_threshold": capabilities.caption_threshold,
        "duplicate_threshold": capabilities.duplicate_threshold,
        "files": [str(p) for p in capabilities.files],
    }


# Modules whose import means a model was loaded (or about to be): frameworks and inference runtimes.
HEAVY_MODULES = ("torch", "onnxruntime", "transformers", "open_clip", "sentence_transformers")
_FRESH_CAPABILITIES = r"""
import json, sys
from helpers import HEAVY_MODULES, capabilities_json
from pixsearch.models import model_capabilities
found = [capabilities_json(model_capabilities(name, sys.argv[1])) for name in sys.argv[2:]]
print(json.dumps({"capabilities": found, "imported": [m for m in HEAVY_MODULES if m in sys.modules]}))
"""


def capabilities_in_fresh_process(names: list[str], cache_dir: Path) -> tuple[list[dict], list[str]]:
    """model_capabilities(name) for each name in a new Python process: (their capabilities_json, the HEAVY_MODULES
    that process imported). The process imports pixsearch from where this one does."""
    import pixsearch

    path = [str(Path(pixsearch.__file__).parents[1]), str(Path(__file__).parent)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    out = subprocess.run([sys.executable, "-c", _FRESH_CAPABILITIES, str(cache_dir), *names], capture_output=True,
                         text=True, timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["capabilities"], result["imported"]
