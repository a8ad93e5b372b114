"""The search page: one HTML page and its static script and styles, served by the API app at `/`.

The page and its files are open; everything the page fetches goes through the API with the user's key (query keys
suffice), so the page shows nothing a key holder could not already see.
"""
from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
PAGE = Path(__file__).parent / "page.html"
# The page loads only its own script and styles; thumbnails arrive as blob: URLs fetched with the key.
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def install_page(app: FastAPI, default_index: str) -> None:
    page = PAGE.read_text(encoding="utf-8").replace("{{default_index}}", html.escape(default_index, quote=True))

    def search_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP,
                                           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    app.add_api_route("/", search_page, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
