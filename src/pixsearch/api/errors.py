"""Every error leaves as `{"error": {"code", "message"}}`; clients never see a stack trace."""
from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pixsearch.search.odata import FilterSyntaxError
from pixsearch.store import FilterError, IndexExistsError, IndexNotFoundError, SchemaError

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
_HTTP_CODES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
               409: "Conflict", 413: "RequestEntityTooLarge", 500: "InternalServerError", 501: "NotImplemented"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status)


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


class GuardMiddleware:
    """Outermost application layer: caps the request body (413) and turns any unhandled exception into a generic 500
    (logged here, never sent). The body is buffered (at most `max_body_bytes`) and replayed to the app."""

    def __init__(self, app: Any, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(
            413, "RequestEntityTooLarge", f"the request body is larger than {self.max_body_bytes} bytes"
        )
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # disconnect: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, replay, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await error_response(500, "InternalServerError", "internal server error")(scope, replay, send)
