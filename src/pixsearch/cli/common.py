"""What every CLI command shares: consoles, exit statuses, opening the engine with friendly errors."""
from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

import typer
from rich.console import Console
from rich.markup import escape

from pixsearch.service import Engine

out = Console()
err = Console(stderr=True, soft_wrap=True)  # paths stay on one line for grep and scripts

# Exit statuses scripts can rely on.
EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 3

IndexOption = typer.Option(None, "--index", "-i", help="Index name (default: photos, or PIXSEARCH_INDEX).")


def fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(EXIT_ERROR)


@contextmanager
def open_engine(index: str | None = None, **engine_options: Any) -> Iterator[Engine]:
    """Open the engine; turn the errors a user can fix into one clear line instead of a traceback."""
    from pixsearch.db import DatabaseError
    from pixsearch.ingest.decode import DecodeError
    from pixsearch.ingest.ocr import OcrUnavailable
    from pixsearch.models.base import ModelNotAvailableError
    from pixsearch.store import IndexNotFoundError

    try:
        with Engine(index=index, **engine_options) as engine:
            yield engine
    except (DatabaseError, IndexNotFoundError, ModelNotAvailableError, DecodeError, OcrUnavailable, ValueError) as exc:
        raise fail(str(exc)) from None


def print_json(value: Any) -> None:
    print(json.dumps(value, default=str))
