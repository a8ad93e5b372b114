"""Generated captions for a photo index (`pixsearch index PATH --captioner openai:MODEL`): a vision LLM's title,
description and keywords per photo, stored apart from what people wrote (generated_title, generated_description,
generated_keywords, generated_by) and part of the photo's caption vector.

The captioner is an explicit opt-in, remembered per index like --ocr (settings["captioner"]: its name and prompt);
its cost so far is kept in settings["caption_usage"].

Captioning is a pass after ingest over the photos whose generated caption is not of their bytes by the current
captioner settings (model, prompt, server: OpenAICaptioner.settings_id), not a step of the ingest pipeline. By cost:
  * what is paid for (one request per distinct content) is the same either way, and the cache (store/generated.py,
    by settings and content hash) makes a rerun, a moved photo or another index over the same files free;
  * the pass looks the cache up for a page of photos at once before reading any file: a cache hit costs no read and
    no decode, where a step inside ingest would only see the photos that run decodes;
  * the pass covers every photo that lacks a caption: an index the captioner is switched on for, a photo whose
    request failed, a new prompt or model — ingest sees none of those;
  * a new photo is read and decoded a second time: a 12 MP JPEG at CAPTION_DRAFT (768 px: decoded at 1/2 scale)
    took 97 ms here, against 69 ms at ingest's 320 px draft, which a step inside ingest would have had to raise to
    768 px anyway (+28 ms per photo for every run, captioned or not); the resize and JPEG sent (1024 x 768) take
    70 ms either way. ~70 ms more per new photo is small beside the request (~1-5 s, a fraction of a cent), and the
    image stage never waits on the service: embedding and writing keep their pace, and a refused key or an outage
    stops the pass after every photo of the run is indexed (nothing is marked failed; the next run resumes).
Each caption is kept as soon as it is bought, so an interrupted run loses none it paid for.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pixsearch.ingest import IngestProgress, NoProgress
from pixsearch.ingest.decode import decode_bytes
from pixsearch.ingest.objects import holds_content
from pixsearch.ingest.descriptions import caption_text, with_generated
from pixsearch.ingest.stage import ITEM_FAILURES
from pixsearch.models.captioner import CAPTION_DRAFT, DEFAULT_PROMPT, CaptionError, CaptionUsage, OpenAICaptioner, \
    load_captioner, parse_captioner_name
from pixsearch.models.hosted import HostedOptions, ImageAtURL
from pixsearch.service.core import IndexCore
from pixsearch.service.roots import read_stored_photo
from pixsearch.store.generated import StoredCaption, cached_captions, store_caption
from pixsearch.store.schema import CAPTION_FIELD

CAPTION_PAGE = 64  # photos looked up in the cache (and written) together
GENERATED_COLUMNS = ("generated_title", "generated_description", "generated_keywords", "generated_by",
                     "generated_from")
USAGE_SETTING = "caption_usage"


@dataclass
class CaptionRun:
    """What one captioning pass did: photos given a caption (bought or from the cache), what it cost, and the
    photos left without one (a warning each: the photo itself is indexed)."""

    captioner: str
    captioned: int = 0
    usage: CaptionUsage = field(default_factory=CaptionUsage)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"captioner": self.captioner, "captioned": self.captioned, **self.usage.to_json(),
                "without_caption": len(self.warnings), "seconds": round(self.seconds, 3)}


def configure(index: IndexCore, captioner: str | bool | None, prompt: str | None = None) -> None:
    """Remember the index's captioner: a name (`openai:MODEL`) switches it on (checked: the name, and that a key is
    there for it, before anything is sent), False switches it off (captions already bought stay), None keeps what
    the index has. `prompt` replaces the index's prompt (None keeps it; its default is the caption_prompt setting)."""
    if captioner is False:
        if index.spec.settings.get("captioner"):
            index.update_settings({"captioner": None})
        return
    if captioner is None and prompt is None:
        return
    current = dict(index.spec.settings.get("captioner") or {})
    if captioner is None and not current:
        raise ValueError("--caption-prompt needs a captioner: give --captioner openai:MODEL")
    name = captioner if captioner is not None else current["name"]
    parse_captioner_name(name)
    wanted = {"name": name, "prompt": prompt if prompt is not None else current.get("prompt")}
    load_captioner(name, hosted=HostedOptions.from_settings(index.settings)).client.close()  # a key for it?
    if wanted != {"name": current.get("name"), "prompt": current.get("prompt")}:
        index.update_settings({"captioner": wanted})


def caption_summary(spec: Any) -> dict[str, Any] | None:
    """An index's captioner and what its generated captions cost so far (None: it never had one)."""
    chosen, usage = spec.settings.get("captioner"), spec.settings.get(USAGE_SETTING)
    if not chosen and not usage:
        return None
    totals = {name: int((usage or {}).get(name) or 0) for name in CaptionUsage().to_json()}
    return {"captioner": chosen["name"] if chosen else None, **totals}


def index_captioner(index: IndexCore) -> OpenAICaptioner | None:
    """A captioner as the index is set up (None: it has none), with the run's own usage counters."""
    chosen = index.spec.settings.get("captioner")
    if not chosen:
        return None
    prompt = chosen.get("prompt") or index.settings.caption_prompt or DEFAULT_PROMPT
    return load_captioner(chosen["name"], hosted=HostedOptions.from_settings(index.settings), prompt=prompt)


def caption_photos(index: IndexCore, captioner: OpenAICaptioner, *, progress: IngestProgress | None = None,
                   photo_url: Callable[[str], str | None] | None = None) -> CaptionRun:
    """Give every photo of the index a generated caption of its bytes by `captioner`'s settings: from the cache,
    or bought (a request per distinct content, `concurrency` at a time) and kept at once. The caption fields and
    the caption vector (people's caption and the generated one) are written a page at a time. photo_url(path):
    a URL the service can fetch a photo from (object stores), sent instead of the photo's bytes.
    ServiceAuthError / ServiceError stop the pass (what it cost so far is counted first)."""
    run = CaptionRun(captioner.name)
    progress = progress or NoProgress()
    started = time.perf_counter()
    settings_id = captioner.settings_id
    total = index.store.count_not_captioned(settings_id)
    if total:
        progress.start(total)
    before = CaptionUsage(**captioner.usage.to_json())
    try:
        after = None
        while True:
            page = index.store.not_captioned(settings_id, after, CAPTION_PAGE,
                                             extra=("path", "content_hash", "title", "description", "keywords"))
            if not page:
                break
            after = page[-1][0]
            known = cached_captions(index.db, settings_id, [row["content_hash"] for _, row in page])
            run.usage.cached += sum(row["content_hash"] in known for _, row in page)
            wanted: dict[str, dict[str, Any]] = {}  # one request per content, whatever photos share it
            for _, row in page:
                if row["content_hash"] not in known:
                    wanted.setdefault(row["content_hash"], row)

            def buy(row: dict[str, Any]) -> StoredCaption | str:
                return _buy(index, captioner, row, photo_url)

            failed: dict[str, str] = {}
            for row, result in zip(wanted.values(), captioner.client.map(buy, list(wanted.values()))):
                if isinstance(result, StoredCaption):
                    known[row["content_hash"]] = result
                else:
                    failed[row["content_hash"]] = result
            run.warnings += [(row["path"], f"no generated caption: {failed[row['content_hash']]}")
                             for _, row in page if row["content_hash"] in failed]
            _write_page(index, captioner, page, known, run)
            progress.advance(len(page))
    finally:
        spent = captioner.usage
        run.usage.requests += spent.requests - before.requests
        run.usage.prompt_tokens += spent.prompt_tokens - before.prompt_tokens
        run.usage.completion_tokens += spent.completion_tokens - before.completion_tokens
        run.seconds = time.perf_counter() - started
        if run.usage.requests or run.usage.cached:
            index.add_to_settings(USAGE_SETTING, {k: v for k, v in run.usage.to_json().items() if v})
    return run


def _buy(index: IndexCore, captioner: OpenAICaptioner, row: dict[str, Any],
         photo_url: Callable[[str], str | None] | None) -> StoredCaption | str:
    """One photo's caption bought and kept (in a pool thread), or why it has none. The photo is read and decoded
    at CAPTION_DRAFT (a JPEG at the smallest scale keeping both sides >= 768 px), or given by URL; a file that is
    not the bytes indexed any more is left for the next `pixsearch index` (which re-embeds it). A refusal (the
    model answered with no caption) is kept too: it was paid for."""
    digest = row["content_hash"]
    try:
        url = photo_url(row["path"]) if photo_url is not None else None
        if url:
            image: Any = ImageAtURL(url)
        else:
            data = read_stored_photo(index, row["path"])
            if not holds_content(data, digest):  # an object-store photo's hash may be its stated MD5
                return "the file changed since it was indexed (index it again)"
            image = decode_bytes(data, digest, max_pixels=index.settings.max_image_pixels, draft=CAPTION_DRAFT).image
        caption, cost = captioner.caption(image)
        stored = StoredCaption(digest, caption.title, caption.description, caption.keywords, None,
                               cost.prompt_tokens, cost.completion_tokens)
    except CaptionError as exc:
        cost = exc.usage or CaptionUsage()
        stored = StoredCaption(digest, None, None, (), str(exc), cost.prompt_tokens, cost.completion_tokens)
    except ITEM_FAILURES as exc:  # unreadable, undecodable, or an image the service refused: not bought
        return str(exc)
    store_caption(index.db, captioner.settings_id, captioner.name, stored)
    return stored


def _write_page(index: IndexCore, captioner: OpenAICaptioner, page: list[tuple[str, dict[str, Any]]],
                known: dict[str, StoredCaption], run: CaptionRun) -> None:
    """The generated fields of the page's photos that have a caption now, and their caption vectors (what people
    wrote, then the generated caption), in one transaction."""
    rows: list[dict[str, Any]] = []
    texts: list[str] = []
    for key, row in page:
        found = known.get(row["content_hash"])
        if found is None:
            continue
        if found.refusal:
            run.warnings.append((row["path"], f"no generated caption: {found.refusal}"))
        generated = {
            "generated_title": found.title, "generated_description": found.description,
            "generated_keywords": list(found.keywords) or None,
            "generated_by": None if found.refusal else captioner.name,
            "generated_from": f"{captioner.settings_id}:{row['content_hash']}",
        }
        run.captioned += not found.refusal
        rows.append({index.spec.key_field: key, **generated})
        texts.append(with_generated(caption_text(row["title"], row["description"], row["keywords"]), generated))
    if not rows:
        return
    columns = list(GENERATED_COLUMNS)
    if any(vf.name == CAPTION_FIELD for vf in index.spec.vector_fields):
        columns.append(CAPTION_FIELD)
        wanted = [i for i, text in enumerate(texts) if text.strip()]
        vectors = index.model().embedder.embed_texts([texts[i] for i in wanted]) if wanted else []
        by_row = dict(zip(wanted, vectors))
        for i, row in enumerate(rows):
            row[CAPTION_FIELD] = by_row.get(i)
    index.write_rows(rows, columns=columns, insert_missing=False)
