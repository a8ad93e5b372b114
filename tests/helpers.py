"""Test data the tests make themselves: altered copies of sample photos and broken files."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
