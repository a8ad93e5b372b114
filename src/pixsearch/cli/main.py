"""The `pixsearch` command: thin over pixsearch.service. Results go to stdout; progress, logs and errors to stderr."""
from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pixsearch.cli.backup import backup_cmd, restore_cmd, scheduled_backups
from pixsearch.cli.indexes import evaluate_cmd, indexes_app, stats_cmd, tune_cmd, vectors_app
from pixsearch.cli.keys import keys_app
from pixsearch.cli.people import people_app
from pixsearch.cli.models import models_app
from pixsearch.cli.common import (EXIT_OK, EXIT_PARTIAL, DeviceOption, IndexOption, caption_cost, err, fail, note,
                                  open_engine, out, print_json, say_as_log_lines, stop_on_sigterm_as_on_ctrl_c)
from pixsearch.limits import MAX_TOP, MAX_WINDOW
from pixsearch.search.ranking import Cutoff
from pixsearch.search.request import SearchRequest, SearchResponse
from pixsearch.service import Engine, Query
from pixsearch.sources import SourceError, is_object_url

if TYPE_CHECKING:
    from pixsearch.api.metrics import IngestMetrics

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Semantic image search on PostgreSQL + pgvector.")


@app.callback()
def _before_every_command(ctx: typer.Context) -> None:
    stop_on_sigterm_as_on_ctrl_c(ctx)


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
        self.console.print(f"[yellow]failed[/] {escape(path)}: {escape(reason)}", highlight=False)

    def stop(self) -> None:
        self.bar.stop()


def _index_paths(engine: Engine, paths: List[str], index: str | None, prune: bool, as_json: bool,
                 follow_symlinks: bool = False, model: str | None = None, regions: str | None = None,
                 ocr: bool | None = None, captioner: str | bool | None = None,
                 caption_prompt: str | None = None, metrics: "IngestMetrics | None" = None,
                 ray: str | None = None, faces: bool | None = None) -> int:
    idx = engine.index(index, create=True, model=model)
    progress = _RichIngestProgress(err)
    if metrics is not None:
        metrics.progress, progress = progress, metrics
    try:
        report = idx.add_paths(paths, prune=prune, progress=progress, follow_symlinks=follow_symlinks, ocr=ocr,
                               captioner=captioner, caption_prompt=caption_prompt, ray=ray, faces=faces)
    finally:
        progress.stop()
    if regions is not None:
        found = idx.add_regions(regions, photo_keys=report.keys)
        err.print(f"regions: {found.regions} in {found.photos} photos ({escape(regions)}), {len(found.failed)} "
                  f"failed, {len(found.unmatched)} boxes for photos not in the index", highlight=False)
    if as_json:
        print(json.dumps(report.to_json()), flush=True)
    _print_report(idx.name, report, f"{report.scanned} image files, {report.elapsed_seconds:.1f} s")
    return EXIT_PARTIAL if report.failed else EXIT_OK


def _print_report(name: str, report, scope: str) -> None:
    summary = (
        f"[bold]{escape(name)}[/]: {report.added} added, {report.updated} updated, {report.moved} moved, "
        f"{report.unchanged} unchanged, {report.removed} removed, {len(report.failed)} failed, "
        f"{len(report.skipped)} skipped"
        + (f", captions re-read for {report.metadata_updated}" if report.metadata_updated else "")
        + f" ({scope})"
    )
    err.print(summary, highlight=False)
    if report.faces is not None:
        found = report.faces
        err.print(f"  faces: {found['faces']} found in {found['photos']} photos scanned, {found['grouped']} grouped, "
                  f"{found['new_people']} new people (pixsearch people list)", highlight=False)
    for path, reason in report.skipped:
        err.print(f"  [dim]skipped[/] {escape(path)}: {escape(reason)}", highlight=False)
    for path, message in report.warnings:
        err.print(f"  [yellow]warning[/] {escape(path)}: {escape(message)}", highlight=False)
    for path, reason in report.failed:
        err.print(f"  [red]failed[/] {escape(path)}: {escape(reason)}", highlight=False)
    if report.captions is not None:
        err.print(f"generated captions ({escape(report.captions['captioner'])}): {caption_cost(report.captions)}",
                  highlight=False)


def _watch(engine: Engine, paths: List[str], index: str | None, follow_symlinks: bool, polling: bool,
           as_json: bool, metrics: "IngestMetrics | None" = None) -> None:
    """Follow the folders until Ctrl+C: each quiet moment after changes, one batch applied and reported. Object
    store locations are listed again every watch_interval seconds (they send no notifications); only a listing
    that changed something is reported."""
    from pixsearch.ingest.watch import FolderWatcher

    idx = engine.index(index)
    remote = [p for p in paths if is_object_url(p)]
    roots = [Path(p).expanduser().absolute() for p in paths if not is_object_url(p) and Path(p).expanduser().is_dir()]
    if not roots and not remote:
        raise fail("--watch needs folders or object store locations to watch")

    def apply(changed: set[str], deleted: set[str], moved: list[tuple[str, str]]) -> None:
        started = time.perf_counter()
        if metrics is not None:
            metrics.batch_started(len(changed) + len(deleted) + len(moved))
        report = idx.apply_folder_changes(changed, deleted, moved, roots=roots, follow_symlinks=follow_symlinks)
        if metrics is not None:
            metrics.batch_done(report)
        if as_json:
            print(json.dumps(report.to_json()), flush=True)
        _print_report(idx.name, report, f"{time.strftime('%H:%M:%S')}, {time.perf_counter() - started:.1f} s")

    def poll() -> None:
        started = time.perf_counter()
        try:
            report = idx.add_paths(remote, prune=True)
        except SourceError as exc:  # a network blip or revoked credentials: said, and tried again next time
            err.print(f"[yellow]not listed[/] ({time.strftime('%H:%M:%S')}): {escape(str(exc))}", highlight=False)
            return
        if metrics is not None:
            metrics.batch_done(report)
        if report.added or report.updated or report.moved or report.removed or report.failed \
                or report.metadata_updated:
            if as_json:
                print(json.dumps(report.to_json()), flush=True)
            _print_report(idx.name, report, f"{time.strftime('%H:%M:%S')}, {time.perf_counter() - started:.1f} s")

    interval = engine.settings.watch_interval
    with FolderWatcher(roots, apply, polling=polling, follow_symlinks=follow_symlinks) if roots else nullcontext() \
            as watcher:
        if metrics is not None and watcher is not None:
            metrics.watch_pending(watcher.pending)
        watched = [f"{len(roots)} folder{'s' if len(roots) != 1 else ''}"] if roots else []
        if remote:
            watched.append(f"{len(remote)} object store location{'s' if len(remote) != 1 else ''} (listed every "
                           f"{interval:g} s)")
        err.print(f"watching {' and '.join(watched)} for changes (Ctrl+C stops)", highlight=False)
        try:
            while True:
                time.sleep(interval if remote else 3600)
                if remote:
                    poll()
        except KeyboardInterrupt:
            err.print("stopping: the last changes are applied first", highlight=False)


@app.command("index")
def index_cmd(
    paths: List[str] = typer.Argument(..., help="Image files or folders (walked recursively), or object store "
                                      "locations: az://CONTAINER/PREFIX (Azure Blob Storage), s3://BUCKET/PREFIX (S3 "
                                      "and S3-compatible stores), with credentials from the environment."),
    index: Optional[str] = IndexOption,
    prune: bool = typer.Option(True, help="Remove photos that were deleted from the scanned folders."),
    follow_symlinks: bool = typer.Option(
        False, "--follow-symlinks", help="Index what symbolic links inside the folders point to (else they are skipped)."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="Model of a new index: offline, clip:PATH_OR_REPO_ID, open_clip:ARCH[:CHECKPOINT], "
        "or a hosted one (photos or captions are sent to the service): azure-vision:https://RESOURCE."
        "cognitiveservices.azure.com, openai-embed:MODEL. An existing index keeps its own (pixsearch reindex moves it)."
    ),
    regions: Optional[str] = typer.Option(
        None, "--regions", help="Also index regions: 'grid' (83 sliding windows at 3 scales; later runs keep doing "
        "it), 'grid-coarse' (34), or a box file: COCO JSON, CSV or JSON Lines (path,x0,y0,x1,y1[,label][,score])."
    ),
    ocr: Optional[bool] = typer.Option(
        None, "--ocr/--no-ocr", help="Read text in the photos (signs, screenshots): searchable and ranked with the "
        "rest; ~0.5-1 s per photo. Remembered for the index's later runs."
    ),
    captioner: Optional[str] = typer.Option(
        None, "--captioner", help="Generate a title, description and keywords per photo with a vision LLM over an "
        "OpenAI-compatible API: openai:MODEL (OPENAI_API_KEY, OPENAI_BASE_URL: OpenAI, Azure OpenAI, Ollama, "
        "vLLM...). The photos (downscaled to 1024 px) are sent to that service. Searchable and filterable as "
        "generated_*; cached by content, so no photo is paid for twice. Remembered for the index's later runs."
    ),
    no_captioner: bool = typer.Option(
        False, "--no-captioner", help="Stop generating captions for this index (the ones made stay)."
    ),
    caption_prompt: Optional[str] = typer.Option(
        None, "--caption-prompt", help="What the captioner is asked (default: the caption_prompt setting, else a "
        "built-in prompt asking for JSON). Remembered; another prompt captions every photo again."
    ),
    faces: Optional[bool] = typer.Option(
        None, "--faces/--no-faces", help="Find faces and group them into people (pixsearch people; stores face "
        "descriptors, biometric data: off unless asked). Remembered for the index's later runs."
    ),
    watch: bool = typer.Option(
        False, "--watch", help="After indexing, follow the folders and apply each change (new, changed, moved, "
        "deleted files and caption sidecars) as it happens, until Ctrl+C."
    ),
    polling: bool = typer.Option(
        False, "--polling", help="With --watch: poll instead of OS notifications (network shares)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Say what a run would embed and how many requests a hosted model would send for it "
        "(read-only: nothing is embedded, sent or written)."
    ),
    metrics_port: Optional[int] = typer.Option(
        None, "--metrics-port", min=0, max=65535, help="Serve Prometheus metrics of this run (files processed, failed, "
        "queued; with --watch, of every batch) at http://127.0.0.1:PORT/metrics, on loopback only (0: a free port)."
    ),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="ADDRESS", help="Read, decode and embed the photos on a Ray cluster: host:port of its "
        "head, or auto (RAY_ADDRESS); local: here. Default: the setting ray_address. Needs pip install "
        "'pixsearch[ray]'."
    ),
    ray_reads: Optional[str] = typer.Option(
        None, "--ray-reads", metavar="auto|workers|driver", help="With --ray, who reads the photos: auto (each node "
        "what it can see or list, this process the rest, sent through Ray's object store; the default), workers "
        "(every node all of it, else an error before any work) or driver (this process all of it). Setting "
        "ray_reads."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout (one line per batch)."),
    device: Optional[str] = DeviceOption,
) -> None:
    """Index photos incrementally: new and changed files are embedded, unchanged ones skipped, moved and renamed
    ones recognised by their content (their rows follow them: nothing is embedded again).

    Exit status 0 when every file was indexed, 3 when some files failed (they are listed), 1 on errors.
    """
    if dry_run:
        from pixsearch.service.plan import plan_index_run

        with open_engine(index) as engine:
            plan = plan_index_run(engine, paths, index=index, model=model, follow_symlinks=follow_symlinks,
                                  captioner=False if no_captioner else captioner, caption_prompt=caption_prompt)
        if as_json:
            print_json(plan.to_json())
        err.print(f"[bold]{escape(plan.index)}[/] (dry run): {escape(plan.describe())}", highlight=False)
        raise typer.Exit(EXIT_OK)
    if captioner is not None and no_captioner:
        raise fail("give --captioner or --no-captioner, not both")
    if ray is not None and ray.strip() not in ("", "local"):
        from pixsearch.ingest.distributed import ClusterError, check_address

        try:
            check_address(ray)  # before the index is opened or created
        except ClusterError as exc:
            raise fail(str(exc)) from None
    with open_engine(index, device=device, ray_reads=ray_reads) as engine:
        metrics = _serve_ingest_metrics(engine, index, metrics_port) if metrics_port is not None else None
        status = _index_paths(engine, paths, index, prune, as_json, follow_symlinks, model, regions, ocr,
                              False if no_captioner else captioner, caption_prompt, metrics, ray, faces)
        if watch:
            _watch(engine, paths, index, follow_symlinks, polling, as_json, metrics)
    raise typer.Exit(status)


def _serve_ingest_metrics(engine: Engine, index: str | None, port: int) -> "IngestMetrics":
    """An indexing run or watcher is a process of its own (often beside the photos, not the server), so it serves
    its own /metrics; on loopback only, since it has no API keys to check."""
    from pixsearch.api.metrics import IngestMetrics

    metrics = IngestMetrics(index or engine.settings.index)
    try:
        bound = metrics.serve(port)
    except OSError as exc:
        raise fail(f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror or exc} (choose another "
                   "--metrics-port)") from None
    err.print(f"metrics: http://127.0.0.1:{bound}/metrics", highlight=False)
    return metrics


@app.command("duplicates")
def duplicates_cmd(
    index: Optional[str] = IndexOption,
    threshold: Optional[float] = typer.Option(
        None, "--threshold", help="Largest cosine distance of the image vectors (default: calibrated for the model)."
    ),
    similar: bool = typer.Option(
        False, "--similar", help="Also group similar shots (a burst of one scene): skip the check that two photos "
        "show the same frame."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the groups as JSON on stdout."),
) -> None:
    """Groups of near-duplicate photos: edited copies (resized, recompressed, cropped, mirrored) and files copied
    to several places, found through the ANN index."""
    with open_engine(index) as engine:
        groups = engine.index(index).duplicates(threshold, same_frame=not similar)
    if as_json:
        print_json([g.to_json() for g in groups])
        return
    for number, group in enumerate(groups, 1):
        out.print(f"[bold]group {number}[/] ({len(group.ids)} photos, distance up to {group.max_distance:.3f})",
                  highlight=False)
        for key in group.ids:
            doc = group.documents.get(key, {})
            out.print(f"  {escape(str(doc.get('path') or key))}", highlight=False)
    err.print(f"{len(groups)} group{'s' if len(groups) != 1 else ''} of near-duplicates", highlight=False)


def _print_hits(query: str, hits) -> None:
    table = Table(title=Text(query, style="bold"), title_justify="left", show_edge=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("path", overflow="fold")
    table.add_column("tags", overflow="fold")
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), f"{hit.score:.4g}", Text(hit.path or hit.id), Text(", ".join(hit.tags or [])))
    out.print(table)


def _parse_cutoff(min_score: float | None, cutoff: str | None) -> Cutoff:
    try:
        return Cutoff.parse(cutoff, min_score)
    except ValueError as exc:
        raise fail(f"--{exc}") from None


def _parse_sort(sort: list[str]) -> list[tuple[str, bool]]:
    keys = []
    for item in sort:
        parts = item.split()
        if not 1 <= len(parts) <= 2 or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc")):
            raise fail(f"--sort {item!r}: use 'FIELD' or 'FIELD asc|desc'")
        keys.append((parts[0], len(parts) == 2 and parts[1].lower() == "desc"))
    return keys


def _parse_weights(items: list[str]) -> dict[str, float]:
    weights = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            raise fail(f"--weight {item!r}: use LIST=NUMBER, e.g. keyword=0.5") from None
        if name not in ("vector", "keyword") or weights[name] < 0:
            raise fail(f"--weight {item!r}: the lists are 'vector' and 'keyword', weights are >= 0")
    return weights


@app.command("search")
def search_cmd(
    text: Optional[str] = typer.Argument(
        None, help='Words, or an expression: "beach" + "sunset" - "people", 2:"red car", image:PATH, id:KEY, ids:A,B.'
    ),
    image: Optional[Path] = typer.Option(None, "--image", help="Find photos that look like this image file."),
    vector: Optional[Path] = typer.Option(None, "--vector", help=".npy file holding one query vector."),
    ids: Optional[str] = typer.Option(None, "--ids", help="Comma-separated stored ids: more like these."),
    field: Optional[str] = typer.Option(None, help="Vector field to search (default: from the query)."),
    k: int = typer.Option(10, "--k", "-k", "--top", min=1, max=MAX_TOP, help="How many hits (per page)."),
    skip: int = typer.Option(0, "--skip", min=0, max=MAX_WINDOW - 1, help="Hits to skip (paging)."),
    filter_: Optional[str] = typer.Option(
        None, "--filter", help="OData filter, e.g. \"width ge 1000 and tags/any(t: t eq 'dog')\"."
    ),
    mode: Optional[str] = typer.Option(None, "--mode", help="vector | keyword | hybrid (default hybrid for text)."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Drop hits scoring below this."),
    cutoff: Optional[str] = typer.Option(None, "--cutoff", help="'gap' (cut after the largest score drop) or "
                                         "'relative:F' (keep scores >= F x best)."),
    sort: List[str] = typer.Option([], "--sort", help="'FIELD [asc|desc]', applied after the relevance cut."),
    facet: List[str] = typer.Option([], "--facet", help="Count values: tags, folder, camera, 'taken_at,interval:year'."),
    weight: List[str] = typer.Option([], "--weight", help="Hybrid list weight, e.g. keyword=0.5 (lists: vector, keyword)."),
    hide_irrelevant: bool = typer.Option(
        False, "--hide-irrelevant", help="Leave out text-query hits the model calls clearly irrelevant (as the page does)."
    ),
    regions: Optional[str] = typer.Option(
        None, "--regions", help="Search regions: 'images' (each photo by its best region, with its box) or 'regions'."
    ),
    index: Optional[str] = IndexOption,
    batch: Optional[Path] = typer.Option(
        None, "--batch", help="File with one query per line (text, or image:PATH); one JSON line of hits per query."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print hits as a JSON array (with --facet: an object)."),
    device: Optional[str] = DeviceOption,
) -> None:
    """Search by text, image, stored ids or a raw vector, with filters, cutoffs, sorting, paging and facets. With no
    query: list the photos passing --filter, newest first.

    Scores: higher is more similar (cosine similarity in vector mode, fused RRF score in hybrid mode)."""
    given = [name for name, value in (("text", text), ("--image", image), ("--vector", vector), ("--batch", batch))
             if value]
    if batch is not None and len(given) > 1:
        raise fail("--batch cannot be combined with other queries")
    if vector is not None and len(given) > 1:
        raise fail(f"give one of search text, --image, --vector or --batch, not both {' and '.join(given)}")
    if batch is not None:
        with open_engine(index, device=device) as engine:
            raise typer.Exit(_search_batch(engine, index, batch, k))
    request = SearchRequest(
        text=text, image=image, ids=[i for i in (ids or "").split(",") if i] or None,
        vector=_load_vector(vector) if vector is not None else None, field=field, filter=filter_, mode=mode,
        top=k, skip=skip, cutoff=_parse_cutoff(min_score, cutoff), sort=_parse_sort(sort), facets=facet,
        weights=_parse_weights(weight), hide_irrelevant=hide_irrelevant, regions=regions,
    )
    with open_engine(index, device=device) as engine:
        result = engine.index(index).query(request)
    label = " + ".join(str(p) for p in (text, image, ids, vector) if p)
    _print_search(result, label, k, as_json=as_json, with_facets=bool(facet))


def _print_search(result: SearchResponse, label: str, k: int, *, as_json: bool, with_facets: bool) -> None:
    """Notes on stderr (hidden hits, fewer hits than asked), then the hits and facets: a table, or JSON."""
    if result.hidden:
        err.print(f"note: {result.hidden} clearly irrelevant hits left out (drop --hide-irrelevant to see them)",
                  highlight=False)
    if not result.complete and len(result.hits) < k:
        why = {"fewer_matches": "no more rows match", "scan_limit": "the index scan reached its limit"}
        err.print(f"note: {len(result.hits)} of {k} hits: {why.get(result.reason, result.reason)}", highlight=False)
    if as_json and with_facets:
        print(json.dumps({"value": [h.to_json() for h in result], "count": result.total, "facets": result.facets,
                          "mode": result.mode}, default=str))
    elif as_json:
        print(json.dumps([h.to_json() for h in result], default=str))
    else:
        _print_hits(f"{label} ({result.mode})", result)
        for name, counts in result.facets.items():
            out.print(f"[bold]{name}[/]: " + escape(", ".join(f"{c['value']} ({c['count']})" for c in counts)),
                      highlight=False)


def _search_batch(engine: Engine, index: str | None, batch: Path, k: int) -> int:
    try:
        lines = [line for line in batch.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise fail(f"cannot read batch file {batch}: {exc.strerror or exc}") from None
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
    vector: Optional[Path] = typer.Option(None, "--vector", help=".npy file holding one query vector."),
    field: Optional[str] = typer.Option(None, help="Vector field (with --vector)."),
    k: int = typer.Option(10, "--k", "-k", min=1, max=MAX_WINDOW),
    index: Optional[str] = IndexOption,
    analyze: bool = typer.Option(False, "--analyze", help="Run the query and show actual times (EXPLAIN ANALYZE)."),
) -> None:
    """Show the PostgreSQL plan of a search and whether the ANN index is used."""
    with open_engine(index) as engine:
        idx = engine.index(index)
        if vector is not None:
            plan = idx.explain(vector=_load_vector(vector), field=field, k=k, analyze=analyze)
        else:
            query = Query(image=image) if image is not None else Query(text=text)
            plan = idx.explain(query, k=k, analyze=analyze)
    print(plan)
    used = [name for name in idx.store.ann_index_names() if f"Index Scan using {name}" in plan]
    err.print(f"ANN index used: {used[0]}" if used else "ANN index not used: exact scan", highlight=False)


def _load_vector(path: Path):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False).reshape(-1)
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read vector file {path}: {exc}") from None


LOOPBACK = ("127.0.0.1", "localhost", "::1")
HostOption = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default).")
PortOption = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free port).")


@app.command("demo")
def demo_cmd(
    index: str = typer.Option("demo", "--index", "-i", help="Index to put the sample photos in."),
    k: int = typer.Option(3, "--k", "-k", min=1, max=50),
    serve: bool = typer.Option(False, "--serve", help="Then serve the search page and the API (Ctrl+C stops)."),
    host: str = HostOption,
    port: int = PortOption,
) -> None:
    """Index the bundled sample photos (a folder per source) and run a few example searches; with --serve, then open
    the search page on them."""
    from pixsearch.samples import DEMO_QUERIES, write_samples

    with open_engine(index) as engine:
        folder = engine.settings.home / "demo-photos"
        written = write_samples(folder, grouped=True)
        err.print(f"{len(written)} sample photos in {escape(str(folder))}", highlight=False)
        status = _index_paths(engine, [folder], index, prune=True, as_json=False)
        idx = engine.index(index)
        for text in DEMO_QUERIES:
            _print_hits(text, idx.search(text, k=k))
        example = next((p for p in written if "chelsea" in p.name), written[0])
        _print_hits(f"more like {example.name}", idx.search(Query(image=example), k=k))
        if serve:
            _serve(engine, host, port, page_index=index, session_key=True)
    raise typer.Exit(status)


@app.command("serve")
def serve_cmd(
    host: str = HostOption,
    port: int = PortOption,
    index: Optional[str] = typer.Option(None, "--index", "-i", help="Index the search page shows (default: photos)."),
    anonymous: bool = typer.Option(
        False, "--anonymous", help="Search and read without a key (writes still need one); loopback only."
    ),
    session_key: bool = typer.Option(
        False, "--session-key", help="Make a query key that lasts until the server stops; print the page link with it."
    ),
    allowed_host: List[str] = typer.Option(
        [], "--allowed-host", help="Another host name clients reach the server by (a proxy's, a DNS name); repeatable."
    ),
    backup_every: Optional[str] = typer.Option(
        None, "--backup-every", help="Write a backup this often (24h, 30m, 7d) into --backup-dir (setting backup_every)."
    ),
    backup_keep: Optional[int] = typer.Option(None, "--backup-keep", min=1, help="Scheduled backups kept (default 7)."),
    backup_dir: Optional[Path] = typer.Option(None, "--backup-dir", help="Where to keep them (default "
                                              "PIXSEARCH_HOME/backups)."),
    device: Optional[str] = DeviceOption,
    log_format: str = typer.Option(
        "text", "--log-format", help="text, or json: one JSON object per line on stderr (time, level, logger, "
        "message; requests with method, route, status, duration_ms) for log shippers."
    ),
) -> None:
    """Serve the search page (/) and the REST API (OpenAPI at /docs). API requests need an `api-key` header with a
    key from `pixsearch keys`; the page asks for one (a query key is enough). Prometheus metrics at /metrics
    (from this machine without a key, else with an admin key)."""
    from pixsearch.api.logs import LOG_FORMATS, log_json

    if log_format not in LOG_FORMATS:
        raise fail(f"--log-format {log_format!r}: use {' or '.join(LOG_FORMATS)}")
    if log_format == "json":
        log_json()
        say_as_log_lines()
        if session_key:  # the link carries the key, and logs are shipped elsewhere
            raise fail("--session-key prints a key in the page link, which --log-format json would send to the "
                       "logs: create a key with `pixsearch keys create` instead")
    with open_engine(backup_every=backup_every, backup_keep=backup_keep, backup_dir=backup_dir,
                     device=device) as engine, \
            scheduled_backups(engine):
        _serve(engine, host, port, page_index=index, session_key=session_key, anonymous=anonymous,
               allowed_hosts=allowed_host, log_format=log_format)


def _serve(engine: Engine, host: str, port: int, *, page_index: str | None, session_key: bool,
           anonymous: bool = False, allowed_hosts: List[str] = (), log_format: str = "text") -> None:
    """Serve with an engine of its own whose SQL statements are bounded by settings.api_statement_timeout (the
    engine given may have been used for long work, such as the demo's indexing); it shares the loaded model."""
    import secrets

    from pixsearch.api.server import AddressInUseError, serve

    if anonymous and host not in LOOPBACK:
        raise fail("--anonymous is only allowed when binding to loopback")
    query_keys = [secrets.token_urlsafe(24)] if session_key else []
    stored_keys = engine.list_api_keys()  # also opens the database now: an unreachable one fails before serving
    if not (anonymous or query_keys or any(k.revoked_at is None for k in stored_keys)):
        raise fail("no API keys yet: create one with `pixsearch keys create --role admin` (or use --session-key, or "
                   "--anonymous on loopback)")

    def announce(base: str) -> None:
        if log_format == "json":
            note(f"search page: {base} (API: {base}indexes, OpenAPI: {base}docs, metrics: {base}metrics)")
            if anonymous:
                note("--anonymous: requests without a key may search and read; writes need an admin key")
            return
        link = f"{base}#key={query_keys[0]}" if query_keys else base
        err.print(f"search page: [bold]{escape(link)}[/]  (API: {base}indexes, OpenAPI: {base}docs; Ctrl+C stops)",
                  highlight=False)
        if query_keys:
            err.print("the link carries a query key valid until this server stops", highlight=False)
        if anonymous:
            err.print("--anonymous: requests without a key may search and read; writes need an admin key",
                      highlight=False)

    bounded = Engine(engine.settings, embedder=engine.model(), statement_timeout_s=engine.settings.api_statement_timeout)
    try:
        bounded.db  # opened before the link is printed
        serve(bounded, host=host, port=port, query_keys=query_keys, allow_anonymous=anonymous, page_index=page_index,
              announce=announce, allowed_hosts=allowed_hosts, log_format=log_format)
    except AddressInUseError as exc:
        raise fail(str(exc)) from None
    finally:
        bounded.close()


@app.command("reindex")
def reindex_cmd(
    name: str = typer.Argument(..., help="The photo index to move."),
    model: Optional[str] = typer.Option(None, "--model", help="The model to move it to."),
    drop_old: bool = typer.Option(False, "--drop-old", help="Drop the old model's fields once switched."),
    abort: bool = typer.Option(False, "--abort", help="Undo a re-index that has not switched yet."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Re-embed a photo index with another model while searches go on using the old one; switch when complete.
    Interrupted, it resumes where it stopped when run again."""
    with open_engine() as engine:
        idx = engine.index(name)
        if abort:
            dropped = idx.abort_reindex()
            err.print(f"re-index of {name} undone; dropped {', '.join(dropped) or 'nothing'}", highlight=False)
            raise typer.Exit(EXIT_OK)
        if model is None:
            raise fail("give --model MODEL (or --abort)")
        progress = _RichIngestProgress(err)
        try:
            report = idx.reindex(model, drop_old=drop_old, progress=progress)
        finally:
            progress.stop()
    if as_json:
        print(json.dumps(report.to_json()))
    fields = ", ".join(f"{column}" for column in report.columns.values())
    err.print(f"[bold]{escape(name)}[/]: {report.embedded} photos embedded into {escape(fields)} by "
              f"{escape(report.model)}{' (resumed)' if report.resumed else ''}; "
              f"{'switched' if report.switched else 'not switched'}; {len(report.failed)} failed"
              + (f"; dropped {', '.join(report.dropped)}" if report.dropped else ""), highlight=False)
    for path, reason in report.failed:
        err.print(f"  [red]failed[/] {escape(path)}: {escape(reason)}", highlight=False)
    raise typer.Exit(EXIT_PARTIAL if report.failed or not report.switched else EXIT_OK)


@app.command("doctor")
def doctor_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """Server, pgvector and Citus versions, features, nodes and shards, the settings that matter, and advice."""
    from pixsearch.service.doctor import diagnose

    with open_engine() as engine:
        report = diagnose(engine)
    if as_json:
        print(json.dumps(report, default=str))
        return
    out.print(f"PostgreSQL {report['server_version']}{' (embedded)' if report['embedded'] else ''}, pgvector "
              f"{report['pgvector_version']}, Citus {report['citus_version'] or 'not installed'}", highlight=False)
    out.print("features: " + ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in report["features"].items()),
              highlight=False)
    for node in report.get("nodes", []):
        out.print(f"node {node['name']}:{node['port']} {node['role']} {'active' if node['active'] else 'INACTIVE'}",
                  highlight=False)
    out.print("settings: " + ", ".join(f"{name} {v['value']}" for name, v in report["settings"].items()),
              highlight=False)
    for index in report["indexes"]:
        where = f", {index['shards']} shards on {index['nodes']} nodes" if index.get("distributed") else ""
        out.print(Text(f"index {index['name']}: {index.get('rows', '?')} rows, "
                       f"{(index.get('total_bytes') or 0) / 1e6:,.1f} MB{where}"))
    for line in report["advice"]:
        out.print(Text(f"advice: {line}"))


app.add_typer(indexes_app, name="indexes")
app.add_typer(vectors_app, name="vectors")
app.add_typer(keys_app, name="keys")
app.add_typer(people_app, name="people")
app.add_typer(models_app, name="models")
app.command("backup")(backup_cmd)
app.command("restore")(restore_cmd)
app.command("stats")(stats_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("tune")(tune_cmd)


def main() -> None:  # pragma: no cover - console entry point is `app`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
