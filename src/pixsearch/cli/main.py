"""The `pixsearch` command: thin over pixsearch.service. Results go to stdout; progress, logs and errors to stderr."""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from pixsearch.service import Engine, Query

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Semantic image search on PostgreSQL + pgvector.")
out = Console()
err = Console(stderr=True, soft_wrap=True)  # paths stay on one line for grep and scripts

# Exit statuses scripts can rely on.
EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 3

IndexOption = typer.Option(None, "--index", "-i", help="Index name (default: photos, or PIXSEARCH_INDEX).")


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(EXIT_ERROR)


@contextmanager
def _engine(index: str | None) -> Iterator[Engine]:
    """Open the engine; turn the errors a user can fix into one clear line instead of a traceback."""
    from pixsearch.db import DatabaseError
    from pixsearch.ingest.decode import DecodeError
    from pixsearch.models.base import ModelNotAvailableError
    from pixsearch.store import IndexNotFoundError

    try:
        with Engine(index=index) as engine:
            yield engine
    except (DatabaseError, IndexNotFoundError, ModelNotAvailableError, DecodeError, ValueError) as exc:
        raise _fail(str(exc).strip("'\"")) from None


class _RichIngestProgress:
    """IngestProgress shown as a Rich bar with rate and ETA; failures are printed above it as they happen."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = Progress(
            TextColumn("[bold]indexing"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = None

    def start(self, total: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task("indexing", total=total, rate="")

    def advance(self, n: int = 1) -> None:
        self.bar.advance(self.task, n)
        speed = self.bar.tasks[0].speed
        if speed:
            self.bar.update(self.task, rate=f"{speed:.1f} img/s")

    def failure(self, path: str, reason: str) -> None:
        self.console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False)

    def stop(self) -> None:
        self.bar.stop()


def _index_paths(engine: Engine, paths: List[Path], index: str | None, prune: bool, as_json: bool) -> int:
    idx = engine.index(index, create=True)
    progress = _RichIngestProgress(err)
    try:
        report = idx.add_paths(paths, prune=prune, progress=progress)
    finally:
        progress.stop()
    if as_json:
        print(json.dumps(report.to_json()))
    summary = (
        f"[bold]{idx.name}[/]: {report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
        f"{report.removed} removed, {len(report.failed)} failed ({report.scanned} image files, "
        f"{report.elapsed_seconds:.1f} s)"
    )
    err.print(summary, highlight=False)
    for path, reason in report.failed:
        err.print(f"  [red]failed[/] {path}: {reason}", highlight=False)
    return EXIT_PARTIAL if report.failed else EXIT_OK


@app.command("index")
def index_cmd(
    paths: List[Path] = typer.Argument(..., help="Image files or folders (walked recursively)."),
    index: Optional[str] = IndexOption,
    prune: bool = typer.Option(True, help="Remove photos that were deleted from the scanned folders."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Index photos incrementally: new and changed files are embedded, unchanged ones skipped.

    Exit status 0 when every file was indexed, 3 when some files failed (they are listed), 1 on errors.
    """
    with _engine(index) as engine:
        status = _index_paths(engine, paths, index, prune, as_json)
    raise typer.Exit(status)


def _print_hits(query: str, hits) -> None:
    table = Table(title=f"[bold]{query}[/]", title_justify="left", show_edge=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("path", overflow="fold")
    table.add_column("tags", overflow="fold")
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), f"{hit.score:.3f}", hit.path, ", ".join(hit.tags or []))
    out.print(table)


@app.command("search")
def search_cmd(
    text: Optional[str] = typer.Argument(None, help="What to look for, in words."),
    image: Optional[Path] = typer.Option(None, "--image", help="Find photos that look like this image file."),
    k: int = typer.Option(10, "--k", "-k", min=1, max=1000, help="How many hits."),
    index: Optional[str] = IndexOption,
    batch: Optional[Path] = typer.Option(
        None, "--batch", help="File with one query per line (text, or image:PATH); one JSON line of hits per query."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print hits as JSON (id, path, score, ...)."),
) -> None:
    """Search by text or by image. Scores: higher is more similar (cosine similarity)."""
    if batch is not None:
        if text or image:
            raise _fail("--batch cannot be combined with a query text or --image")
        with _engine(index) as engine:
            raise typer.Exit(_search_batch(engine, index, batch, k))
    if image is not None and text:
        raise _fail("give either search text or --image, not both")
    query = Query(image=image) if image is not None else Query(text=text)
    with _engine(index) as engine:
        hits = engine.index(index).search(query, k=k)
    if as_json:
        print(json.dumps([h.to_json() for h in hits]))
    else:
        _print_hits(query.describe(), hits)


def _search_batch(engine: Engine, index: str | None, batch: Path, k: int) -> int:
    try:
        lines = [line for line in batch.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise _fail(f"cannot read batch file {batch}: {exc.strerror or exc}") from None
    idx = engine.index(index)
    status = EXIT_OK
    for line in lines:
        query = Query.parse_line(line)
        try:
            hits = idx.search(query, k=k)
        except (ValueError, OSError) as exc:
            # Keep one output line per input line so results stay aligned with the queries.
            print(json.dumps({"query": query.describe(), "error": str(exc)}), flush=True)
            status = EXIT_PARTIAL
            continue
        print(json.dumps([h.to_json() for h in hits]), flush=True)
    return status


@app.command("explain")
def explain_cmd(
    text: Optional[str] = typer.Argument(None),
    image: Optional[Path] = typer.Option(None, "--image"),
    k: int = typer.Option(10, "--k", "-k", min=1, max=1000),
    index: Optional[str] = IndexOption,
) -> None:
    """Show the PostgreSQL plan of a search (is the ANN index used?)."""
    query = Query(image=image) if image is not None else Query(text=text)
    with _engine(index) as engine:
        print(engine.index(index).explain(query, k=k))


@app.command("demo")
def demo_cmd(
    index: str = typer.Option("demo", "--index", "-i", help="Index to put the sample photos in."),
    k: int = typer.Option(3, "--k", "-k", min=1, max=50),
) -> None:
    """Index the bundled sample photos and run a few example searches."""
    from pixsearch.samples import DEMO_QUERIES, write_samples

    with _engine(index) as engine:
        folder = engine.settings.home / "samples"
        written = write_samples(folder)
        err.print(f"{len(written)} sample photos in {folder}", highlight=False)
        status = _index_paths(engine, [folder], index, prune=True, as_json=False)
        idx = engine.index(index)
        for text in DEMO_QUERIES:
            _print_hits(text, idx.search(text, k=k))
        example = next((p for p in written if "chelsea" in p.name), written[0])
        _print_hits(f"more like {example.name}", idx.search(Query(image=example), k=k))
    raise typer.Exit(status)


def main() -> None:  # pragma: no cover - console entry point is `app`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
