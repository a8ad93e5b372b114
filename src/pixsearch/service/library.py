"""Indexing photo files into a photo index: the index's side of `pixsearch index` (ingest/ does the files)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pixsearch.ingest import IngestOptions, IngestProgress, IngestReport, ingest_paths
from pixsearch.ingest.distributed import RayOptions
from pixsearch.models.base import ModelNotAvailableError
from pixsearch.models.hosted import ServiceError
from pixsearch.service import builds, captioning
from pixsearch.service.captions import upgrade_photo_index
from pixsearch.service.core import IndexCore
from pixsearch.service.faces import detect_faces, set_faces
from pixsearch.service.regions import add_regions
from pixsearch.service.roots import photo_urls, record_roots
from pixsearch.sources import is_object_url, normal_url
from pixsearch.store import SchemaError
from pixsearch.store.schema import CAPTION_FIELD


def as_sources(paths: Sequence[str | Path]) -> list[Path | str]:
    """Folders and files as Paths, object store URLs as their one spelling (text: a Path would drop a slash)."""
    return [normal_url(p) if is_object_url(p) else Path(p) for p in paths]


def add_paths(
    index: IndexCore,
    paths: Sequence[str | Path],
    *,
    prune: bool = True,
    follow_symlinks: bool = False,
    progress: IngestProgress | None = None,
    roots: Sequence[Path] | None = None,
    ocr: bool | None = None,
    captioner: str | bool | None = None,
    caption_prompt: str | None = None,
    photo_url: Callable[[str], str | None] | None = None,
    caption_errors: str = "raise",
    ray: str | None = None,
    faces: bool | None = None,
) -> IngestReport:
    """Index photo files and folders (see ingest.pipeline); the folders are recorded as the index's roots, the
    only places the server opens photo files for thumbnails. `roots`: the folders `paths` were found in (a
    watcher's folders, the uploads folder), recorded instead, and each path is then taken as the walk of those
    folders would take it (no root of its own: one behind a symbolic link is skipped unless follow_symlinks).
    ocr: read text in the photos (True/False is remembered for the index's later runs; None: as the index is
    set up). captioner: `openai:MODEL` generates captions (sends the photos to that service; remembered, with
    caption_prompt), False stops it, None: as the index is set up; captioning runs after the photos are indexed
    (service/captioning.py) and its cost is report.captions. photo_url(path): a URL the hosted model's service
    can fetch a photo from (object stores), sent instead of its bytes. caption_errors="warn": a refused key or an
    outage of the captioner is a warning on the report (uploads) instead of an error. A path may be an object
    store URL (az://container/prefix, s3://bucket/prefix): its objects are listed and read with the environment's
    credentials (sources/), and the URL is recorded as a root like a folder. ray: run the image stage on this Ray
    cluster ("auto": RAY_ADDRESS; "local": here; None: as the index's setting ray_address, else the setting
    ray_address says). faces: find faces and group them into people (service/faces.py; remembered like ocr)."""
    if index.spec.kind != "photos":
        raise SchemaError(f"index {index.name!r} is not a photo index: add vectors to it instead")
    upgrade_photo_index(index)
    captioning.configure(index, captioner, caption_prompt)
    if ocr is not None and ocr != bool(index.spec.settings.get("ocr")):
        if ocr:
            from pixsearch.ingest.ocr import shared_reader

            shared_reader().load()  # fails now, with how to install it, rather than as a warning per photo
        index.update_settings({"ocr": ocr or None})
    if faces is not None:
        set_faces(index, faces)  # loads the face model first: a missing install fails before any work
    settings = index.settings
    photo_url = photo_urls(index, photo_url)
    model = index.model()
    # On a GPU, batches as large as its free memory allows (models/device.py). Asking resolves the device now, so
    # `--device cuda` where CUDA does not work is one error before any file is read. On Ray the actors embed, each
    # on its node's device, and the stage sizes the batches by what they report (ingest/distributed.py).
    ray_options = _ray_options(index, ray)
    gpu_batch = None if ray_options else getattr(model.embedder, "images_per_batch", lambda: None)()
    options = IngestOptions(
        batch_size=max(settings.batch_size, gpu_batch or 0),
        decode_workers=settings.decode_workers,
        prune=prune,
        follow_symlinks=follow_symlinks,
        max_file_bytes=settings.max_file_bytes,
        max_pixels=settings.max_image_pixels,
        ocr=bool(index.spec.settings.get("ocr")),
        photo_url=photo_url,
        download_concurrency=settings.download_concurrency,
        ray=ray_options,
    )
    sources = as_sources(paths)
    record_roots(index, as_sources(roots) if roots is not None else sources, follow_symlinks)
    caption = next((vf.name for vf in index.spec.vector_fields if vf.name == CAPTION_FIELD), None)
    report = ingest_paths(index.store, model.embedder, sources, options,
                          columns=model.columns, caption_field=caption, progress=progress,
                          loading=lambda incoming: builds.loading(index, incoming),
                          within=[Path(r) for r in roots] if roots is not None else None)
    _caption(index, report, photo_url, caption_errors, progress)
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


def _caption(index: IndexCore, report: IngestReport, photo_url: Callable[[str], str | None] | None,
             caption_errors: str, progress: Any) -> None:
    """Generated captions for the photos lacking one, when the index has a captioner; the cost on the report."""
    captioner = captioning.index_captioner(index)
    if captioner is None:
        return
    try:
        run = captioning.caption_photos(index, captioner, progress=progress, photo_url=photo_url)
    except (ServiceError, ModelNotAvailableError) as exc:
        if caption_errors != "warn":
            raise
        report.warnings.append(("", f"no generated captions: {exc}"))
        return
    finally:
        captioner.client.close()
    report.captions = run.to_json()
    report.warnings.extend(run.warnings)


def _ray_options(index: IndexCore, ray: str | None) -> RayOptions | None:
    address = ray if ray is not None else (index.spec.settings.get("ray_address") or index.settings.ray_address)
    address = (address or "").strip()
    if address in ("", "local"):
        return None
    return RayOptions(address, cache_dir=str(index.settings.cache_dir), device=index.settings.device,
                      reads=index.settings.ray_reads)
