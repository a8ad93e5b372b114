"""Find image files under the given paths."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class FoundFile:
    path: str
    size_bytes: int
    mtime_ns: int

    @property
    def id(self) -> str:
        return photo_id(self.path)


def photo_id(path: str) -> str:
    """A stable key per absolute path: re-indexing a changed file updates its row instead of adding one."""
    return hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def scan(roots: Iterable[Path]) -> tuple[list[FoundFile], list[tuple[str, str]]]:
    """Return the image files under `roots` (files or folders, walked recursively) and (path, reason) failures.

    Files are chosen by extension; whether they really are images is found out when they are decoded.
    """
    found: dict[str, FoundFile] = {}
    failures: list[tuple[str, str]] = []

    def add(path: str) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            failures.append((path, f"cannot read file information: {exc.strerror or exc}"))
            return
        found[path] = FoundFile(path, st.st_size, st.st_mtime_ns)

    for root in roots:
        root = Path(root).expanduser().absolute()
        if root.is_file():
            add(str(root))
            continue
        if not root.exists():
            failures.append((str(root), "no such file or folder"))
            continue

        def on_error(exc: OSError, root: Path = root) -> None:
            failures.append((exc.filename or str(root), f"cannot list folder: {exc.strerror or exc}"))

        for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                    add(os.path.join(dirpath, name))
    return sorted(found.values(), key=lambda f: f.path), failures
