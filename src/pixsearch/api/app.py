"""FastAPI app factory: thin routes over pixsearch.service.Engine, in Azure AI Search's JSON shapes.

Handlers are plain functions registered with `add_api_route`, so the later OData path forms (`/indexes('NAME')`, ...)
are just more registrations of the same handlers.
"""
from __future__ import annotations

import base64
import binascii
import logging
import time
from typing import Annotated, Any, Callable, Iterable, Sequence

from fastapi import Body, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError

from pixsearch.api import azure
from pixsearch.api.docs import install_docs
from pixsearch.api.errors import (
    DEFAULT_MAX_BODY_BYTES,
    ApiError,
    BodyGuardMiddleware,
    GuardMiddleware,
    filter_error,
    install_handlers,
)
from pixsearch.api.keys import ROLE_STATE, AuthMiddleware, KeyRing
from pixsearch.api.metrics import METRICS_PATH, ApiMetrics, MetricsMiddleware
from pixsearch.api.models import (
    IndexBatch,
    IndexIn,
    SearchBody,
    VectorQueryIn,
    definition,
    document_actions,
    jsonable,
)
from pixsearch.api.origin import LOOPBACK_NAMES, OriginGuard
from pixsearch.api.people import install_people
from pixsearch.limits import (
    MAX_DUPLICATE_GROUPS,
    MAX_FIELD_LIST_ITEM_CHARS,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_FILES,
    THUMBNAIL_SIZES,
)
from pixsearch.search.context import FileTermRefused
from pixsearch.search.ranking import Cutoff
from pixsearch.search.plan import check_select
from pixsearch.search.request import MODES, SearchRequest, VectorQuery
from pixsearch.service import Engine, Index, Outcome, PhotoNotFound, StorageError
from pixsearch.store import FilterError, IndexExistsError, IndexNotFoundError, IndexSpec
from pixsearch.web import install_page

log = logging.getLogger(__name__)

DEFAULT_TOP = 50  # Azure's default page size
# Each indexed document's statusCode, as Azure AI Search gives it
DOCUMENT_STATUS = {Outcome.WRITTEN: 200, Outcome.DELETED: 200, Outcome.INVALID: 400, Outcome.NOT_FOUND: 404}


def create_app(
    engine: Engine,
    admin_keys: Iterable[str] = (),
    query_keys: Iterable[str] = (),
    *,
    allow_anonymous: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    key_lookup: Callable[[str], str | None] | None = None,
    page_index: str | None = None,
    allowed_hosts: Iterable[str] | None = LOOPBACK_NAMES,
    key_clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The API, plus the search page at / showing `page_index` (default: the configured index) unless ?index=.

    allowed_hosts: the host names clients may reach the server by (the Host header; None: any). The default suits
    a server on loopback; `pixsearch serve` passes the names of the address it binds.
    key_clock: the clock the stored-key cache's expiry reads (tests drive it to check revocation without waiting).
    With allow_anonymous, requests without a key may search and read (the query role), never write."""
    ring = KeyRing(admin_keys, query_keys, key_lookup, clock=key_clock)
    if not ring and not allow_anonymous:
        raise ValueError("the API needs at least one admin or query key (or allow_anonymous=True)")
    app = FastAPI(title="pixsearch", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    install_handlers(app)
    # Starlette runs the last middleware added first: the origin check, the guard (a declared body over the limit:
    # 413, read nothing), the key check, and only then is the body read (keyless uploads are refused unread).
    app.add_middleware(BodyGuardMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(AuthMiddleware, ring=ring, allow_anonymous=allow_anonymous)
    app.add_middleware(GuardMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(OriginGuard, allowed_hosts=allowed_hosts)
    metrics = ApiMetrics(engine, lambda: app.router.routes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: refusals of the others are counted too
    install_docs(app)
    handlers = Handlers(engine)
    h = handlers
    app.add_api_route("/healthz", h.health, methods=["GET"])
    app.add_api_route(METRICS_PATH, metrics.endpoint, methods=["GET"], include_in_schema=False)
    app.add_api_route("/whoami", h.whoami, methods=["GET"])
    app.add_api_route("/indexes", h.list_indexes, methods=["GET"])
    app.add_api_route("/indexes/{name}", h.get_index, methods=["GET"])
    app.add_api_route("/indexes/{name}", h.put_index, methods=["PUT"])
    app.add_api_route("/indexes/{name}", h.delete_index, methods=["DELETE"], status_code=204)
    app.add_api_route("/indexes/{name}/stats", h.index_stats, methods=["GET"])
    app.add_api_route("/indexes/{name}/capabilities", h.capabilities, methods=["GET"])
    app.add_api_route("/indexes/{name}/duplicates", h.duplicates, methods=["GET"])
    app.add_api_route("/indexes/{name}/docs/index", h.index_documents, methods=["POST"])
    app.add_api_route("/indexes/{name}/docs/search", h.search, methods=["POST"])
    app.add_api_route("/indexes/{name}/docs/$count", h.count, methods=["GET"])  # before /docs/{key}
    app.add_api_route("/indexes/{name}/docs/{key}", h.get_document, methods=["GET"])
    app.add_api_route("/indexes/{name}/images", h.upload_images, methods=["POST"])
    app.add_api_route("/indexes/{name}/images/search", h.search_by_upload, methods=["POST"])
    app.add_api_route("/thumbnails/{key}", h.thumbnail, methods=["GET"])
    # Azure AI Search's own forms (what azure-search-documents sends): same handlers, OData paths
    app.add_api_route("/indexes", h.post_index, methods=["POST"], status_code=201)
    app.add_api_route("/indexes('{name}')", h.get_index, methods=["GET"])
    app.add_api_route("/indexes('{name}')", h.put_index, methods=["PUT"])
    app.add_api_route("/indexes('{name}')", h.delete_index, methods=["DELETE"], status_code=204)
    app.add_api_route("/indexes('{name}')/search.stats", h.index_stats, methods=["GET"])
    app.add_api_route("/indexes('{name}')/docs/search.index", h.index_documents, methods=["POST"])
    app.add_api_route("/indexes('{name}')/docs/search.post.search", h.search, methods=["POST"])
    app.add_api_route("/indexes('{name}')/docs/$count", h.count, methods=["GET"])
    app.add_api_route("/indexes('{name}')/docs('{key}')", h.get_document, methods=["GET"])
    for path in ("/indexes('{name}')/docs", "/indexes('{name}')/docs/search.suggest",
                 "/indexes('{name}')/docs/search.post.suggest", "/indexes('{name}')/docs/search.autocomplete",
                 "/indexes('{name}')/docs/search.post.autocomplete", "/indexes('{name}')/search.analyze"):
        app.add_api_route(path, h.not_implemented, methods=["GET", "POST"], include_in_schema=False)
    install_people(app, handlers.open)
    install_page(app, page_index or engine.settings.index)
    app.state.handlers = handlers
    app.state.metrics = metrics
    return app


class Handlers:
    """Sync handlers (FastAPI runs them in its thread pool; the engine's connection pool is thread-safe)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def open(self, name: str) -> Index:
        try:
            return self.engine.index(name)
        except IndexNotFoundError:
            raise ApiError(404, "IndexNotFound", f"no index named {name!r}") from None

    # -- images ----------------------------------------------------------------------------------------------------
    def upload_images(self, name: str, files: list[UploadFile] = File(...)) -> JSONResponse:
        """Multipart image files -> embedded and indexed; a result per file, 207 when some failed."""
        index = self.open(name)
        if len(files) > MAX_UPLOAD_FILES:
            raise ApiError(400, "InvalidRequest", f"at most {MAX_UPLOAD_FILES} files per request")
        results = []
        for upload in files:
            data = upload.file.read(MAX_UPLOAD_BYTES + 1)
            entry = {"filename": upload.filename, "key": None, "status": False, "statusCode": 400}
            if len(data) > MAX_UPLOAD_BYTES:
                entry["errorMessage"] = f"file larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB"
            else:
                try:
                    key, report = index.add_image_bytes(upload.filename or "upload", data)
                except StorageError as exc:  # the server's folder is full or read-only: not the client's fault
                    entry.update(errorMessage=str(exc), statusCode=507)
                except (ValueError, OSError) as exc:
                    entry["errorMessage"] = str(exc)
                else:
                    failed = "; ".join(reason for _, reason in report.failed)
                    entry.update(key=key, status=not failed, statusCode=422 if failed else 201,
                                 errorMessage=failed or None)
            results.append(entry)
        all_ok = all(r["status"] for r in results)
        return JSONResponse({"value": results}, status_code=200 if all_ok else 207)

    def thumbnail(self, key: str, index: str | None = None, size: int = Query(256)) -> Response:
        if size not in THUMBNAIL_SIZES:
            raise _bad(f"size must be one of {', '.join(map(str, THUMBNAIL_SIZES))}")
        try:
            data = self.open(index or self.engine.settings.index).thumbnail(key, size)
        except PhotoNotFound as exc:
            raise ApiError(404, "DocumentNotFound", str(exc)) from None
        return Response(data, media_type="image/webp", headers={"Cache-Control": "private, max-age=86400"})

    # -- indexes ---------------------------------------------------------------------------------------------------
    def health(self) -> dict[str, str]:
        return {"status": "ok"}

    def whoami(self, request: Request) -> dict[str, str]:
        """The caller's own role ("admin" or "query"), so a client (the page) offers only what its key may do.
        Nothing about other keys."""
        return {"role": getattr(request.state, ROLE_STATE)}

    def not_implemented(self, request: Request) -> None:
        raise ApiError(501, "NotImplemented", f"{request.method} {request.url.path} is not supported by pixsearch")

    def list_indexes(self, request: Request) -> dict[str, Any]:
        shape = azure.definition if _azure(request) else definition
        return {"value": [shape(spec) for spec in self.engine.list_indexes()]}

    def get_index(self, name: str, request: Request) -> dict[str, Any]:
        return (azure.definition if _azure(request) else definition)(self.open(name).spec)

    def post_index(self, request: Request, body: Annotated[dict[str, Any], Body()]) -> JSONResponse:
        """Azure's Create Index: the name is in the body, and an existing index is a conflict."""
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "InvalidRequest", "the index definition needs a 'name'")
        try:
            self.engine.index(name)
        except IndexNotFoundError:
            return self.put_index(name, request, body)
        raise ApiError(409, "IndexExists", f"index {name!r} already exists")

    def put_index(self, name: str, request: Request, body: Annotated[dict[str, Any], Body()]) -> JSONResponse:
        if body.get("name") is not None and body.get("name") != name:
            raise ApiError(400, "InvalidRequest", f"the body names index {body.get('name')!r} but the URL names {name!r}")
        if azure.is_azure_definition(body):
            kind, shape = "documents", azure.definition
            key, fields, vector_fields = azure.to_service(body)
        else:
            try:
                parsed = IndexIn.model_validate(body)
            except ValidationError as exc:
                raise _bad(_validation_errors(exc)) from None
            kind, shape = parsed.kind, (azure.definition if _azure(request) else definition)
            key, fields, vector_fields = parsed.to_service()
        try:
            existing: IndexSpec | None = self.engine.index(name).spec
        except IndexNotFoundError:
            existing = None
        if existing is not None:
            same = (existing.kind, existing.key_field, existing.fields, existing.vector_fields) == (
                kind, key, fields, vector_fields)
            if same:
                return JSONResponse(shape(existing), status_code=200)
            raise ApiError(409, "IndexExists", f"index {name!r} exists with a different definition; "
                           "delete it first to change it")
        if kind != "documents" or any(v.model_id for v in vector_fields):
            raise ApiError(400, "InvalidRequest", "only 'documents' indexes of precomputed vectors (no modelId) can be "
                           "created here; photo indexes are created by `pixsearch index`")
        try:
            index = self.engine.create_index(name, vector_fields, fields, key_field=key)
        except IndexExistsError as exc:
            raise ApiError(409, "IndexExists", str(exc)) from None
        return JSONResponse(shape(index.spec), status_code=201)

    def delete_index(self, name: str) -> Response:
        self.open(name)
        try:
            self.engine.delete_index(name)
        except IndexNotFoundError:
            raise ApiError(404, "IndexNotFound", f"no index named {name!r}") from None
        return Response(status_code=204)

    def capabilities(self, name: str) -> dict[str, Any]:
        """What a search client (the page) may ask of an index: its fields' abilities, whether it embeds text, and
        whether clearly irrelevant hits can be hidden. Open to query keys; no stored data in it."""
        index = self.open(name)
        relevance = None
        if index.modelled:
            try:
                model = index.model()
                text_search = model.text_field is not None
                if model.embedder.relevance is not None:
                    relevance = {"threshold": model.embedder.relevance.threshold}
            except ValueError:
                text_search = False
        else:
            text_search = False
        return {"name": index.name, "kind": index.spec.kind, "model": index.spec.model, "key": index.spec.key_field,
                "textSearch": text_search, "keywordSearch": any(f.searchable for f in index.spec.fields),
                "regions": bool(index.spec.settings.get("regions")),
                "faces": index.has_faces,
                "relevance": relevance,
                "fields": [{"name": f.name, "type": f.type, "filterable": f.filterable, "facetable": f.facetable,
                            "sortable": f.sortable, "retrievable": f.retrievable} for f in index.spec.fields]}

    def duplicates(self, name: str, threshold: float | None = Query(None, ge=0, le=2),
                   similar: bool = False, top: int = Query(100, ge=1, le=MAX_DUPLICATE_GROUPS)) -> dict[str, Any]:
        """Groups of near-duplicate photos (largest first, at most `top`): `threshold` is the image vectors' cosine
        distance (default: calibrated for the model); `similar` also groups similar shots. Admin keys only: it
        looks at every photo's neighbours."""
        index = self.open(name)
        try:
            groups = index.duplicates(threshold, same_frame=not similar, max_groups=top)
        except ValueError as exc:
            raise ApiError(400, "InvalidRequestParameter", str(exc)) from None
        return {"value": [jsonable(g.to_json()) for g in groups]}

    def index_stats(self, name: str) -> dict[str, Any]:
        stats = self.open(name).stats()
        vector_bytes = sum(v.get("ann_index_bytes") or 0 for v in stats["vector_fields"].values())
        return {"documentCount": stats["rows"], "storageSize": stats["total_bytes"],
                "vectorIndexSize": vector_bytes, "details": jsonable(stats)}

    # -- documents -------------------------------------------------------------------------------------------------
    def count(self, name: str) -> PlainTextResponse:
        return PlainTextResponse(str(self.open(name).count()))

    def get_document(self, name: str, key: str, request: Request,
                     select: str | None = Query(None, alias="$select")) -> dict[str, Any]:
        if "('" in request.url.path:
            key = key.replace("''", "'")  # OData string literal escaping
        index = self.open(name)
        found = index.get([key], vectors=True).get(key)
        if found is None:
            raise ApiError(404, "DocumentNotFound", f"no document with key {key!r} in index {name!r}")
        doc = {index.spec.key_field: key, **found}
        if select:
            names = _select_names(index.spec, select)
            try:
                check_select(index.spec, names, allow_vectors=True)
            except ValueError as exc:
                raise _bad(str(exc)) from None
            doc = {n: doc.get(n) for n in names}
        return jsonable(doc)

    def index_documents(self, name: str, body: IndexBatch) -> JSONResponse:
        index = self.open(name)
        actions, invalid = document_actions(index.spec, body.value)
        results = {i: r for i, r in invalid.items()}
        written = index.write_documents([a for _, a in actions])
        results.update({i: r for (i, _), r in zip(actions, written)})
        value = [{"key": r.key, "status": r.ok, "errorMessage": r.message, "statusCode": DOCUMENT_STATUS[r.outcome]}
                 for _, r in sorted(results.items())]
        ok = all(v["status"] for v in value)
        return JSONResponse({"value": value}, status_code=200 if ok else 207)

    # -- search ----------------------------------------------------------------------------------------------------
    def search(self, name: str, body: SearchBody) -> dict[str, Any]:
        return self._search(name, body)

    def search_by_upload(
        self,
        name: str,
        image: UploadFile = File(..., description="The image to search by."),
        query: str | None = Form(None, description="Optional search body (JSON), as for docs/search."),
    ) -> dict[str, Any]:
        """Search by an uploaded image file (multipart), plus anything a search body can say."""
        try:
            body = SearchBody.model_validate_json(query or "{}")
        except ValidationError as exc:
            raise _bad("query: " + _validation_errors(exc)) from None
        data = image.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise _bad(f"image larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        return self._search(name, body, [VectorQuery(image=data)])

    def _search(self, name: str, body: SearchBody, extra: Sequence[VectorQuery] = ()) -> dict[str, Any]:
        index = self.open(name)
        request = _search_request(index.spec, body, extra)
        try:
            response = index.query(request, allow_file_terms=False)
        except FileTermRefused as exc:
            raise ApiError(400, "FileQueryNotAllowed", str(exc)) from None
        except FilterError as exc:
            raise filter_error(exc) from None
        except ValueError as exc:  # the service's user errors (SchemaError, ModelMismatchError, DecodeError...)
            raise ApiError(400, "InvalidRequest", str(exc)) from None
        key = index.spec.key_field
        debug = body.debug not in (None, False, "disabled")
        value = []
        for hit in response.hits:
            doc = {key: hit.id, **hit.document}
            if request.select is not None:
                doc = {n: doc.get(n) for n in request.select}
            item = {"@search.score": hit.score, **doc}
            if hit.region is not None:
                item["@search.region"] = hit.region
            if debug:
                item["@search.subscores"] = hit.subscores
            value.append(item)
        out: dict[str, Any] = {}
        if body.count:
            out["@odata.count"] = response.total
        if body.facets:
            out["@search.facets"] = response.facets
        if debug:
            out["@search.debug"] = {"mode": response.mode, "complete": response.complete, "reason": response.reason}
        if response.hidden:
            out["@pixsearch.hidden"] = response.hidden
        if response.building:
            out["@pixsearch.indexBuilding"] = jsonable(response.building)
        out["value"] = value
        return jsonable(out)


def _azure(request: Request) -> bool:
    """Azure's clients send api-version (accepted and otherwise ignored) and use the OData path form."""
    return "api-version" in request.query_params or "('" in request.url.path


def _bad(message: str) -> ApiError:
    return ApiError(400, "InvalidRequest", message)


def _validation_errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())


def _field_list(spec: IndexSpec, what: str, value: str) -> list[str]:
    """The comma-separated items of an orderby or select. One that names more items than the index has fields is
    refused by a count and a length check before it is split: a megabyte list costs no parsing or sorting."""
    allowed = spec.field_count
    items = value.count(",") + 1
    if items > allowed:
        raise _bad(f"{what}: {items} items, but index {spec.name!r} has {allowed} fields; name each at most once")
    if len(value) > allowed * MAX_FIELD_LIST_ITEM_CHARS:
        raise _bad(f"{what}: {len(value)} characters; index {spec.name!r} has {allowed} fields, so at most "
                   f"{allowed * MAX_FIELD_LIST_ITEM_CHARS} characters ({MAX_FIELD_LIST_ITEM_CHARS} per item)")
    return value.split(",")


def _select_names(spec: IndexSpec, select: str) -> list[str]:
    """`$select`'s comma-separated field names, capped like orderby (_field_list); each is checked against the index
    by search/plan.py's check_select."""
    return [s.strip() for s in _field_list(spec, "select", select) if s.strip()]


def _orderby(spec: IndexSpec, value: str | None) -> list[tuple[str, bool]]:
    sort: list[tuple[str, bool]] = []
    if not value:
        return sort
    for part in _field_list(spec, "orderby", value):
        words = part.split()
        if not words:
            continue
        if len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise _bad(f"orderby: cannot read {part.strip()!r}; use 'field', 'field asc' or 'field desc'")
        descending = len(words) == 2 and words[1].lower() == "desc"
        if words[0] == "search.score()":
            if not descending or sort:
                raise _bad("orderby: search.score() is only supported as 'search.score() desc' first (the default)")
            continue
        sort.append((words[0], descending))
    return sort


def _image_bytes(value: str) -> bytes:
    """Base64 image bytes, optionally as a data: URL."""
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("the image is not valid base64") from None


def _vector_query(vq: VectorQueryIn, i: int) -> VectorQuery:
    where = f"vectorQueries[{i}]"
    field = vq.fields.strip() if vq.fields is not None else None
    if field is not None and "," in field:
        raise ApiError(501, "NotImplemented", f"{where}: a vector query searches one vector field; send one query per "
                       "field instead (they are fused)")
    common = {"field": field, "k": vq.k, "weight": vq.weight, "exact": vq.exhaustive}
    if vq.kind == "vector":
        if vq.vector is None:
            raise _bad(f"{where}: a vector query of kind 'vector' needs 'vector'")
        return VectorQuery(vector=vq.vector, **common)
    if vq.kind == "text":
        if not vq.text or not vq.text.strip():
            raise _bad(f"{where}: a vector query of kind 'text' needs 'text'")
        return VectorQuery(text=vq.text, **common)
    if vq.kind in ("image", "imageBinary"):
        data = vq.image or vq.base64Image
        if not data:
            raise _bad(f"{where}: a vector query of kind '{vq.kind}' needs base64 image bytes in 'image'")
        return VectorQuery(image=_image_bytes(data), **common)
    ids = [vq.id] if vq.id else list(vq.ids or [])
    if not ids:
        raise _bad(f"{where}: a vector query of kind 'id' needs 'id' (or 'ids')")
    return VectorQuery(ids=ids, **common)


def _search_request(spec: IndexSpec, body: SearchBody, extra: Sequence[VectorQuery] = ()) -> SearchRequest:
    """The service request for a search body. `search` text is embedded and keyword-matched (hybrid); each vector
    query adds a list to the fusion, except a text query repeating the search text (Azure clients send both for a
    hybrid query); no text and no vector query lists everything, newest first (Azure's `search=*`)."""
    text = body.search if body.search and body.search.strip() not in ("", "*") else None
    mode = body.mode
    if body.queryType is not None:
        if body.queryType in MODES:
            mode = mode or body.queryType
        elif body.queryType not in ("simple", "full"):
            raise _bad(f"queryType {body.queryType!r} is not supported; use simple, full, vector, keyword or hybrid")
    queries = [_vector_query(vq, i) for i, vq in enumerate(body.vectorQueries)] + list(extra)
    field = None
    repeated = next((q for q in queries if text is not None and q.text == text), None)
    if repeated is not None:
        queries.remove(repeated)
        field = repeated.field
        mode = mode or "hybrid"
    # Azure pages over the k neighbours of each query: with no top, a page is the largest k.
    k = max((q.k or 0 for q in queries), default=0)
    top = body.top if body.top is not None else (k or DEFAULT_TOP)  # bounds: checked by the service (limits.py)
    try:
        cutoff = Cutoff.parse(body.cutoff)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    request = SearchRequest(text=text, field=field, filter=body.filter, mode=mode, top=top, skip=body.skip,
                            sort=_orderby(spec, body.orderby), facets=list(body.facets), vector_queries=queries,
                            hide_irrelevant=body.relevance == "auto", regions=body.regions, cutoff=cutoff,
                            select=_select_names(spec, body.select) if body.select else None)
    return request
