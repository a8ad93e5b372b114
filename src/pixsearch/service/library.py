"""Indexing photo files into a photo index: the index's side of `pixsearch index` (ingest/ does the files)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from pixsearch.ingest import IngestOptions, IngestProgress, IngestReport, ingest_paths
from pixsearch.service import builds
from pixsearch.service.captions import upgrade_photo_index
from pixsearch.service.core import IndexCore
from pixsearch.service.faces import detect_faces, set_faces
from pixsearch.service.regions import add_regions
from pixsearch.service.roots import record_roots
from pixsearch.store import SchemaError
from pixsearch.store.schema import CAPTION_FIELD


def add_paths(
    index: IndexCore,
    paths: Sequence[str | Path],
    *,
    prune: bool = True,
    follow_symlinks: bool = False,
    progress: IngestProgress | None = None,
    roots: Sequence[Path] | None = None,
    ocr: bool | None = None,
    faces: bool | None = None,
) -> IngestReport:
    """Index photo files and folders (see ingest.pipeline); the folders are recorded as the index's roots, the
    only places the server opens photo files for thumbnails. `roots`: the folders `paths` were found in (a
    watcher's folders, the uploads folder), recorded instead, and each path is then taken as the walk of those
    folders would take it (no root of its own: one behind a symbolic link is skipped unless follow_symlinks).
    ocr: read text in the photos (True/False is remembered for the index's later runs; None: as the index is
    set up). faces: find faces and group them into people (service/faces.py; remembered likewise)."""
    if index.spec.kind != "photos":
        raise SchemaError(f"index {index.name!r} is not a photo index: add vectors to it instead")
    upgrade_photo_index(index)
    if ocr is not None and ocr != bool(index.spec.settings.get("ocr")):
        if ocr:
            from pixsearch.ingest.ocr import shared_reader

            shared_reader().load()  # fails now, with how to install it, rather than as a warning per photo
        index.update_settings({"ocr": ocr or None})
    if faces is not None:
        set_faces(index, faces)  # loads the face model first: a missing install fails before any work
    settings = index.settings
    options = IngestOptions(
        batch_size=settings.batch_size,
        decode_workers=settings.decode_workers,
        prune=prune,
        follow_symlinks=follow_symlinks,
        max_file_bytes=settings.max_file_bytes,
        max_pixels=settings.max_image_pixels,
        ocr=bool(index.spec.settings.get("ocr")),
    )
    model = index.model()
    record_roots(index, [Path(p) for p in (roots if roots is not None else paths)], follow_symlinks)
    caption = next((vf.name for vf in index.spec.vector_fields if vf.name == CAPTION_FIELD), None)
    report = ingest_paths(index.store, model.embedder, [Path(p) for p in paths], options,
                          columns=model.columns, caption_field=caption, progress=progress,
                          loading=lambda incoming: builds.loading(index, incoming),
                          within=[Path(r) for r in roots] if roots is not None else None)
    auto_regions = index.spec.settings.get("regions", {}).get("auto")
    if auto_regions and report.embedded_keys:  # regions of new and changed photos, as the index was set up
        add_regions(index, auto_regions, photo_keys=report.embedded_keys)
    if index.spec.settings.get("faces"):  # faces of the photos not scanned yet: new, changed, or from before
        started = time.perf_counter()
        found = detect_faces(index)
        report.stage_seconds["faces"] = time.perf_counter() - started
        report.faces = found.to_json()
        report.warnings.extend((path, f"faces not searched: {reason}") for path, reason in found.failed)
    if report.embedded and model.text_field is not None and not getattr(model.embedder, "hosted", False):
        # Ready the text tower now (its one-time ONNX export needs torch, which ingest has loaded anyway), so the
        # first search is quick and a search process never imports torch. A hosted model has nothing to ready, and
        # a warm-up would be a paid request.
        model.embed_text("warm up")
    return report
