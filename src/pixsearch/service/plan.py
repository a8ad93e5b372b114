"""What `pixsearch index` would do, without doing it (`--dry-run`): which files it would embed, and how many
requests a hosted model would send for them — before any photo leaves the machine or any request is paid for.

Counts are upper bounds: a new file whose bytes equal an indexed photo that moved is recognised by its content
while indexing and costs nothing, which only reading every new file would tell. Captions are read from the files'
sidecars and embedded metadata (no pixels are decoded); an object-store photo is not downloaded for a plan (that
is the run's cost, not the plan's), so each one is counted as having a caption.

With a captioner (given, or the index's own), the plan also counts the caption requests the captioning pass would
send (service/captioning.py): one per distinct content among the photos the index would hold after the run that
have no cached caption for the captioner's settings (model, prompt, server). The content of a file to embed is
known from the listing for an object with a stated MD5, else counted as new.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from pixsearch.ingest.objects import ObjectFile, SourcesScan, describe_found, read_options, scan_sources, split_roots
from pixsearch.ingest.scan import FoundFile, inside, normal_path
from pixsearch.models import HOSTED_PREFIXES, model_capabilities, parse_model_name, service_requests
from pixsearch.models.captioner import load_captioner
from pixsearch.models.hosted import HostedOptions
from pixsearch.sources import url_inside
from pixsearch.store import IndexNotFoundError, get_index
from pixsearch.store.generated import cached_captions
from pixsearch.store.index_store import IndexStore

_LOOKUP_CHUNK = 1000


@dataclass
class RunPlan:
    index: str
    model: str
    exists: bool  # the index exists (else the run would create it)
    files: int  # image files found
    unchanged: int
    to_embed: int  # new or changed files (at most: moved ones turn out free)
    captions_changed: int  # files whose caption sidecars changed: captions embedded again, pixels not
    captions: int  # of the files to embed or re-describe, those with a caption (embedded as text too)
    requests: int  # requests the model would send (0 for a local model)
    service: str | None  # where they would go (host), None for a local model
    requests_per_minute: float | None
    failed: int  # files the scan could not read
    captioner: str | None = None  # the captioner the run would use (None: no captions generated)
    caption_requests: int = 0  # requests it would send (at most: one per distinct content without a cached caption)
    caption_service: str | None = None  # where they would go (host)

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        what = (f"{self.files} image files: {self.to_embed} to embed, {self.captions_changed} with changed captions, "
                f"{self.unchanged} unchanged; {self.captions} captions to embed as text")
        captions = (f"; captioner {self.captioner}: at most {self.caption_requests} caption requests to "
                    f"{self.caption_service}" if self.captioner else "")
        if self.service is None:
            return f"{what}; {self.model} runs here: no requests{captions}"
        pace = (f", at most {self.requests_per_minute:g} a minute" if self.requests_per_minute else "")
        return f"{what}; at most {self.requests} requests to {self.service}{pace}{captions}"


def plan_index_run(engine, paths: Sequence[str | Path], *, index: str | None = None, model: str | None = None,
                   follow_symlinks: bool = False, captioner: str | bool | None = None,
                   caption_prompt: str | None = None) -> RunPlan:
    """What `pixsearch index PATHS` would embed and send, reading the folders (or listing the object store
    prefixes) and the index only. captioner / caption_prompt as `pixsearch index` takes them (None: the index's
    own; False: none)."""
    settings = engine.settings
    name = index or settings.index
    try:
        spec = get_index(engine.db, name)
    except IndexNotFoundError:
        spec = None
    model_name = (spec.model if spec is not None and spec.model else None) or model or settings.model
    model_name = model_capabilities(model_name, settings.cache_dir).name  # checks the name, sends nothing
    scanned = scan_sources(list(paths), follow_symlinks=follow_symlinks, max_file_bytes=settings.max_file_bytes)
    objects = read_options(settings.max_file_bytes)
    stored = {}
    if spec is not None:
        store = IndexStore(engine.db, spec)
        ids = [f.id for f in scanned.found]
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            stored.update(store.stored_states(ids[start:start + _LOOKUP_CHUNK]))
    embed, describe, unchanged = [], [], 0
    for f in scanned.found:
        state = stored.get(f.id)
        if state and state.path == f.path and state.size_bytes == f.size_bytes and state.mtime_ns == f.mtime_ns:
            if state.sidecar_state == f.sidecar_state:
                unchanged += 1
            else:
                describe.append(f)
        else:
            embed.append(f)

    def has_caption(found) -> bool:
        if isinstance(found, ObjectFile):
            return True  # its embedded metadata would take a download: counted, at most
        return bool(describe_found(found, objects, follow_symlinks=follow_symlinks).searchable_text().strip())

    batch = settings.batch_size
    requests = captions = 0
    for files, with_images in ((embed, True), (describe, False)):  # ingest embeds captions batch by batch
        for start in range(0, len(files), batch):
            texts = sum(has_caption(f) for f in files[start:start + batch])
            images = len(files[start:start + batch]) if with_images else 0
            captions += texts
            requests += service_requests(model_name, images, texts)
    prefix, argument = parse_model_name(model_name)
    service = None
    if prefix in HOSTED_PREFIXES:
        target = argument if prefix == "azure-vision" else (HostedOptions.from_settings(settings).openai_base_url
                                                             or "https://api.openai.com/v1")
        service = urlsplit(target.partition("?")[0]).netloc or target
    plan = RunPlan(index=name, model=model_name, exists=spec is not None, files=len(scanned.found),
                   unchanged=unchanged, to_embed=len(embed), captions_changed=len(describe), captions=captions,
                   requests=requests, service=service, requests_per_minute=settings.hosted_requests_per_minute,
                   failed=len(scanned.failures))
    chosen = (spec.settings.get("captioner") if spec is not None else None) or {}
    caption_name = None if captioner is False else captioner or chosen.get("name")
    if caption_name:
        prompt = (caption_prompt if caption_prompt is not None else chosen.get("prompt")) or settings.caption_prompt
        client = load_captioner(caption_name, hosted=HostedOptions.from_settings(settings), prompt=prompt or None)
        try:
            plan.captioner, plan.caption_service = client.name, urlsplit(client.client.base_url).netloc
            store = IndexStore(engine.db, spec) if spec is not None else None
            plan.caption_requests = _caption_requests(engine.db, store, client.settings_id, scanned, paths, embed)
        finally:
            client.client.close()
    return plan


def _caption_requests(db, store: IndexStore | None, settings_id: str, scanned: SourcesScan,
                      paths: Sequence[str | Path], embed: list[FoundFile]) -> int:
    """Caption requests the pass after the run would send (see the module docstring): the distinct contents,
    without a cached caption for `settings_id`, of the photos the index would hold that lack one."""
    to_embed = {f.id for f in embed}
    found = {f.id for f in scanned.found}
    local, remote = split_roots(paths)
    folders = [normal_path(p) for p in local]

    def pruned(path: str) -> bool:  # under a scanned root, but not found there any more
        return any(url_inside(path, root) for root in remote) or any(inside(path, folder) for folder in folders)

    contents: set[str] = set()
    after = None
    while store is not None:
        page = store.not_captioned(settings_id, after, _LOOKUP_CHUNK, extra=("path", "content_hash"))
        if not page:
            break
        after = page[-1][0]
        contents.update(row["content_hash"] for key, row in page
                        if key not in to_embed and (key in found or not pruned(row["path"])))
    unknown = 0
    for f in embed:
        if isinstance(f, ObjectFile) and f.md5:
            contents.add(f.md5)  # an object's content hash is the MD5 the listing states (ingest/objects.py)
        else:
            unknown += 1  # its content is known once it is read: counted as new
    return len(contents) - len(cached_captions(db, settings_id, sorted(contents))) + unknown
