"""Prometheus metrics (prometheus-client): the API server's requests, its database pool and outage state, the query
vector cache; and the progress of an indexing run or folder watcher (`pixsearch index --watch --metrics-port`).

Every registry here is the app's (or the command's) own CollectorRegistry, never prometheus-client's global one: two
apps in one process (tests, `demo --serve`) keep their counts apart. Labels are bounded: requests are counted by
route template (`/indexes/{name}/docs/search`), never by raw path, so a client cannot mint a time series per URL.
Values read from the engine (pool, outage, cache) are collected at scrape time from memory: a scrape never waits for
the database, and answers during an outage.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from pixsearch.api.logs import request_log
from pixsearch.service import Engine

METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"  # the route label of requests that match no route (404s of any path: one series)
# Request latency buckets, in seconds: a cached search answers in milliseconds, an upload embedding images in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _EngineCollector(Collector):
    """The engine's state, read when scraped: the database pool and outage, the query-vector cache."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        status = self.engine.database_status()
        up = GaugeMetricFamily("pixsearch_database_up", "1 while the database answers, 0 during an outage (requests "
                               "are refused with 503 until it is back)")
        up.add_metric([], 1 if status is None or status.up else 0)
        yield up
        outages = CounterMetricFamily("pixsearch_database_outages", "Database outages since the server started")
        outages.add_metric([], status.outages if status is not None else 0)
        yield outages
        pool = (("in_use", "Database connections handed out to requests", "in_use"),
                ("waiting", "Requests waiting for a database connection", "waiting"),
                ("size", "Database connections open (in use or idle)", "size"),
                ("max", "Most database connections the pool opens", "max_size"))
        for suffix, help_text, attribute in pool:
            family = GaugeMetricFamily(f"pixsearch_database_pool_{suffix}", help_text)
            family.add_metric([], getattr(status, attribute) if status is not None else 0)
            yield family
        cache = self.engine.query_vectors
        helps = {"hits": "Query texts and uploaded images whose vector the query-vector cache held",
                 "misses": "Query texts and uploaded images the model embedded (not in the query-vector cache)"}
        for outcome, help_text in helps.items():
            family = CounterMetricFamily(f"pixsearch_query_vector_cache_{outcome}", help_text)
            family.add_metric([], getattr(cache, outcome))
            yield family
        entries = GaugeMetricFamily("pixsearch_query_vector_cache_entries", "Query vectors held by the cache")
        entries.add_metric([], cache.entries)
        yield entries


class ApiMetrics:
    """The API app's registry: requests by method, route template and status; latency histograms by route; the
    engine's state (collected at scrape time)."""

    def __init__(self, engine: Engine, routes: Callable[[], Iterable[BaseRoute]]):
        self.registry = CollectorRegistry(auto_describe=True)
        self._routes = routes
        self.requests = Counter("pixsearch_http_requests", "HTTP requests answered, by route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("pixsearch_http_request_duration_seconds", "Time to answer an HTTP request, from "
                                 "its arrival to the end of its response", ["method", "route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(engine))

    def route_of(self, scope: dict) -> str:
        """The template of the route a request went to (set by the router), or the one it would have gone to when
        a middleware answered first (a refused key, a body too large)."""
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str) and path:
            return path
        partial = None
        for candidate in self._routes():
            match, _ = candidate.matches(scope)
            if match == Match.FULL:
                return getattr(candidate, "path", UNMATCHED) or UNMATCHED
            if match == Match.PARTIAL and partial is None:  # the path matched, the method did not (405)
                partial = getattr(candidate, "path", None)
        return partial or UNMATCHED

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    async def endpoint(self) -> Response:
        """GET /metrics: Prometheus' text format (loopback without a key, else admin keys: api/keys.py). Answered on
        the event loop from memory, not in the thread pool: requests queued for a database connection can fill
        that pool, and a scrape is most wanted then."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


# Methods counted under their own name; anything else a client sends is counted as "other" (bounded labels).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class MetricsMiddleware:
    """Outermost: times every request and counts it by route template and status, refusals by the other
    middlewares included."""

    def __init__(self, app, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # a handler that raised through every layer: the server answers 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
            method = scope["method"] if scope["method"] in _METHODS else "other"
            route = self.metrics.route_of(scope)
            self.metrics.observe(method, route, status, seconds)
            if request_log.isEnabledFor(logging.INFO):  # --log-format json; text mode logs warnings only
                ms = round(seconds * 1000, 1)
                request_log.info("%s %s %d %.1f ms", method, route, status, ms,
                                 extra={"method": method, "route": route, "status": status, "duration_ms": ms})


# -- indexing progress (pixsearch index [--watch] --metrics-port) ---------------------------------------------------
class IngestMetrics:
    """Files of an indexing run and of a folder watcher's batches: processed (indexed, unchanged, moved, removed
    or failed), failed, and queued (found but not processed yet: the rest of the first run, the batch being applied
    and the changes the watcher holds until the folder is quiet). Also an IngestProgress (ingest/pipeline.py), so the
    first run reports file by file; `progress` is the display it forwards to."""

    def __init__(self, index: str, progress=None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.progress = progress
        self._lock = threading.Lock()
        self._queued = 0
        self._pending: Callable[[], int] = lambda: 0
        labels = {"index": index}
        self.processed = Counter("pixsearch_ingest_files_processed", "Files taken off the queue: indexed, unchanged, "
                                 "moved, removed or failed", list(labels), registry=self.registry).labels(**labels)
        self.failed = Counter("pixsearch_ingest_files_failed", "Files that could not be indexed (each is reported "
                              "with its reason)", list(labels), registry=self.registry).labels(**labels)
        self.batches = Counter("pixsearch_ingest_watch_batches", "Batches of folder changes applied by the watcher",
                               list(labels), registry=self.registry).labels(**labels)
        queued = Gauge("pixsearch_ingest_files_queued", "Files found but not processed yet (the first run's rest, "
                       "the batch being applied, changes waiting for the folder to be quiet)", list(labels),
                       registry=self.registry).labels(**labels)
        queued.set_function(lambda: self._queued + self._pending())
        self.last_batch = Gauge("pixsearch_ingest_last_batch_timestamp_seconds", "When the watcher last applied a "
                                "batch (Unix time)", list(labels), registry=self.registry).labels(**labels)

    def watch_pending(self, pending: Callable[[], int]) -> None:
        """Count what the folder watcher holds (changes not delivered yet) as queued."""
        self._pending = pending

    # IngestProgress
    def start(self, total: int) -> None:
        with self._lock:
            self._queued = total
        if self.progress is not None:
            self.progress.start(total)

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self._queued = max(0, self._queued - n)
        self.processed.inc(n)
        if self.progress is not None:
            self.progress.advance(n)

    def failure(self, path: str, reason: str) -> None:
        self.failed.inc()
        if self.progress is not None:
            self.progress.failure(path, reason)

    def stop(self) -> None:
        with self._lock:
            self._queued = 0
        if self.progress is not None:
            self.progress.stop()

    # the watcher's batches
    def batch_started(self, paths: int) -> None:
        with self._lock:
            self._queued = paths

    def batch_done(self, report) -> None:
        """One applied batch (an IngestReport): its files processed and failed."""
        with self._lock:
            self._queued = 0
        self.processed.inc(report.added + report.updated + report.moved + report.unchanged + report.removed
                           + len(report.failed))
        self.failed.inc(len(report.failed))
        self.batches.inc()
        self.last_batch.set(time.time())

    def serve(self, port: int) -> int:
        """Serve /metrics on 127.0.0.1:`port` (0: any free port) in a daemon thread; the port bound. Loopback only:
        this process has no API keys to check, so only this machine may read it (Prometheus, or an agent, here)."""
        from prometheus_client import start_http_server

        server, _ = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        return server.server_address[1]
