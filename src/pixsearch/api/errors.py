"""Every error leaves as `{"error": {"code", "message"}}`; clients never see a stack trace."""
from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pixsearch.db import DatabaseError, DatabaseFull, DatabaseUnavailable, QueryTimeout
from pixsearch.limits import MAX_BODY_BYTES as DEFAULT_MAX_BODY_BYTES
from pixsearch.search.odata import FilterSyntaxError
from pixsearch.store import FilterError, IndexExistsError, IndexNotFoundError, SchemaError

log = logging.getLogger(__name__)

_HTTP_CODES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
               409: "Conflict", 413: "RequestEntityTooLarge", 500: "InternalServerError", 501: "NotImplemented"}
RETRY_AFTER_SECONDS = 5
# While the database is down, requests are refused at once and its return is noticed within half a second.
OUTAGE_RETRY_AFTER_SECONDS = 2
# A JSON string escape for NUL: \u0000 preceded by an even number of backslashes (an odd one escapes the first).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status)


def unavailable_response(exc: DatabaseError) -> JSONResponse:
    """503 with Retry-After for what is the database's state, not the request's fault: a statement that ran past
    the API's statement_timeout, or a database that cannot be reached right now; 507 when its disk is full. Not
    logged here: the database layer logs an outage once, not once per refused request."""
    if isinstance(exc, DatabaseFull):
        log.warning("%s", exc)
        return error_response(507, "InsufficientStorage", "the database has no space left for this write; nothing "
                              "of it was kept (the server's log names the folder to free)")
    if isinstance(exc, QueryTimeout):
        code, message = "QueryTimeout", ("the query ran longer than the server allows (setting api_statement_timeout): "
                                         "narrow it with a filter or fewer facets, or try again")
        retry_after = RETRY_AFTER_SECONDS
    else:
        code, message = "DatabaseUnavailable", "the database is not reachable right now; try again shortly"
        retry_after = OUTAGE_RETRY_AFTER_SECONDS
        if not isinstance(exc, DatabaseUnavailable):  # anything else is unexpected enough to be worth a line
            log.warning("database error: %s", str(exc).strip().splitlines()[0] if str(exc).strip() else
                        type(exc).__name__)
    response = error_response(503, code, message)
    response.headers["Retry-After"] = str(retry_after)
    return response


def filter_error(exc: FilterError) -> ApiError:
    if isinstance(exc, FilterSyntaxError):
        return ApiError(400, "InvalidFilter", str(exc), position=exc.position)
    return ApiError(400, "InvalidFilter", str(exc))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        if e.get("type") == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", "")
            pos = e["loc"][1] if len(e["loc"]) > 1 else "?"
            return f"malformed JSON body: {detail} at position {pos}".replace(":  at", " at")
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg')}")
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "InvalidRequest", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "Error"), message)

    @app.exception_handler(IndexNotFoundError)
    async def _not_found(request: Request, exc: IndexNotFoundError) -> JSONResponse:
        return error_response(404, "IndexNotFound", str(exc))

    @app.exception_handler(IndexExistsError)
    async def _exists(request: Request, exc: IndexExistsError) -> JSONResponse:
        return error_response(409, "IndexExists", str(exc))

    @app.exception_handler(FilterError)
    async def _filter(request: Request, exc: FilterError) -> JSONResponse:
        err = filter_error(exc)
        return error_response(err.status, err.code, err.message, **err.extra)

    @app.exception_handler(SchemaError)
    async def _schema(request: Request, exc: SchemaError) -> JSONResponse:
        return error_response(400, "InvalidRequest", str(exc))

    @app.exception_handler(DatabaseError)
    async def _database(request: Request, exc: DatabaseError) -> JSONResponse:
        return unavailable_response(exc)


def _has_nul(scope: dict) -> bool:
    return "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b"").lower()


def _json_body(scope: dict) -> bool:
    content_type = dict(scope.get("headers") or []).get(b"content-type", b"application/json")
    return content_type.split(b";")[0].strip().lower() in (b"application/json", b"")


def _sends_body(scope: dict) -> bool:
    """Whether the client announced a body (a Content-Length above 0, or chunked transfer encoding)."""
    headers = dict(scope.get("headers") or [])
    length = headers.get(b"content-length", b"0").strip()
    return (length.isdigit() and int(length) > 0) or b"chunked" in headers.get(b"transfer-encoding", b"").lower()


def answer_early(scope: dict, response: JSONResponse) -> JSONResponse:
    """A refusal sent before the request's body was read to its end: it closes the connection, so the server stops
    there instead of taking in (and discarding) the rest of the upload."""
    if _sends_body(scope):
        response.headers["Connection"] = "close"
    return response


class GuardMiddleware:
    """Outermost application layer, before the key check: refuses a body declared larger than `max_body_bytes`
    (413) and NUL characters in the URL without reading anything, and turns any unhandled exception into a
    generic 500 (logged here, never sent). The body itself is read by BodyGuardMiddleware, after the key check."""

    def __init__(self, app: Any, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await answer_early(scope, too_large(self.max_body_bytes))(scope, receive, send)
            return
        if _has_nul(scope):
            await answer_early(scope, nul_refused())(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except DatabaseError as exc:
            if started:
                raise
            await unavailable_response(exc)(scope, receive, send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await error_response(500, "InternalServerError", "internal server error")(scope, receive, send)


def too_large(max_body_bytes: int) -> JSONResponse:
    return error_response(413, "RequestEntityTooLarge", f"the request body is larger than {max_body_bytes} bytes")


def nul_refused() -> JSONResponse:
    return error_response(400, "InvalidRequest", "NUL characters (\\u0000) are not allowed in requests")


class BodyGuardMiddleware:
    """Inside the key check (only requests with a valid key get here): reads the body, at most `max_body_bytes`
    (413 as soon as a chunked body goes over), refuses NUL characters in JSON bodies (PostgreSQL cannot store them:
    a clear 400, not an error deep inside), and replays the buffered body to the route."""

    def __init__(self, app: Any, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # disconnect: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await answer_early(scope, too_large(self.max_body_bytes))(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if _json_body(scope) and (b"\x00" in body or _JSON_NUL.search(body)):
            await nul_refused()(scope, receive, send)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
