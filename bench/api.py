"""API benchmark: what the REST API (and so the search page) adds on top of the service, side by side in one run.

    python bench/api.py [--copies 10] [--runs 50]

Indexes the sample photos (--copies variants of each, 800 px), starts `pixsearch serve --session-key` on loopback
(its own process, as users run it), then times the page's requests, taking turns: the same request through the
service in this process, and over HTTP with the session's query key (httpx, keep-alive), as the page sends them —
recent photos (listing + facets + exact count), a new text search (hybrid + facets) and its next page, "more like
this" (a stored id), a search by a new uploaded 1024 px JPEG and its next page, and a cached thumbnail. "New" queries
differ in every run, so neither side's query-vector cache answers them; next pages are answered from it.
Prints p50/p95 per path and the HTTP/in-process ratio; writes bench/results/api.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import httpx
from PIL import Image

from pixsearch.config import Settings
from pixsearch.samples import sample_files
from pixsearch.search.request import SearchRequest, VectorQuery
from pixsearch.service import Engine

PAGE = 24
FACETS = ["tags,count:20", "taken_at,interval:year,count:50"]
SELECT = "id,path,filename,folder,taken_at,tags"


def make_photos(folder: Path, copies: int) -> None:
    for n, (name, source) in enumerate(sorted(sample_files(grouped=True).items())):
        image = Image.open(source).convert("RGB")
        image.thumbnail((800, 800))
        for c in range(copies):
            variant = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if c % 2 else image
            variant = variant.rotate(c * 2, resample=Image.Resampling.BILINEAR)
            path = folder / Path(name).parent / f"{Path(name).stem}-{c:02d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            variant.save(path, "JPEG", quality=88)
            stamp = 1_500_000_000 + n * 86_400 * 30 + c * 3_600
            os.utime(path, (stamp, stamp))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered), 2), "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2)}


def start_server(home: Path) -> tuple[subprocess.Popen, str, str]:
    """`pixsearch serve --session-key` in its own process; returns it, its base URL and the session's query key."""
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("pixsearch")), "serve", "--port", "0", "--session-key"],
        env=dict(os.environ, PIXSEARCH_HOME=str(home)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = ""
    while "search page:" not in line:
        line = server.stderr.readline()
        if not line and server.poll() is not None:
            raise SystemExit("pixsearch serve did not start")
    base, key = re.search(r"(http://\S+?)/#key=(\S+)", line).groups()
    return server, base, key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=10, help="variants of each sample photo to index")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "api.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pixsearch-bench-api-"))
    home = Path(os.environ.get("PIXSEARCH_HOME") or work / "home")
    make_photos(work / "photos", args.copies)
    with Engine(Settings.load(home=home)) as engine:
        try:
            engine.delete_index("bench-api")
        except LookupError:
            pass
        index = engine.index("bench-api", create=True)
        report = index.add_paths([work / "photos"])
        rows = index.count()
        print(f"{rows} photos indexed ({report.added} added) in {report.elapsed_seconds:.1f} s", flush=True)
        some_id = index.query(SearchRequest(top=1))[0].id
        big = Image.open(sample_files()["rocket.jpg"]).convert("RGB")
        big.thumbnail((1024, 1024))
        uploads = []  # a different file for every new-image run: the server keeps recent query vectors
        for i in range(args.runs + 4):
            buffer = io.BytesIO()
            big.crop((i % 7, i // 7, big.width, big.height)).save(buffer, "JPEG", quality=92)
            uploads.append(buffer.getvalue())
        index.thumbnail(some_id, 320)  # cached from here on, as the page sees it after the first visit
        turns: dict[str, int] = {}  # which new query each side of a path asks next

        def fresh(side: str) -> int:
            turns[side] = turns.get(side, 0) + 1
            return turns[side]

        def body(**extra) -> dict:
            return {"top": PAGE, "count": True, "select": SELECT, "facets": FACETS, **extra}

        server, base, key = start_server(home)

        def post_search(client: httpx.Client, payload: dict) -> httpx.Response:
            return client.post(f"{base}/indexes/bench-api/docs/search", json=payload)

        def post_image(client: httpx.Client, data: bytes, **extra) -> httpx.Response:
            return client.post(f"{base}/indexes/bench-api/images/search", files={"image": ("q.jpg", data, "image/jpeg")},
                               data={"query": json.dumps(body(**extra))})

        def image_query(data: bytes, skip: int = 0, facets: list[str] = FACETS) -> SearchRequest:
            return SearchRequest(vector_queries=[VectorQuery(image=data)], top=PAGE, skip=skip, facets=facets)

        paths: dict[str, tuple[Callable[[], object], Callable[[httpx.Client], object]]] = {
            "recent photos (list + facets + count)": (
                lambda: index.query(SearchRequest(top=PAGE, facets=FACETS)),
                lambda c: post_search(c, body()),
            ),
            "text, new query, hybrid + facets": (
                lambda: index.query(SearchRequest(text=f"a cat on a sofa {fresh('text')}", top=PAGE, facets=FACETS)),
                lambda c: post_search(c, body(search=f"a cat on a sofa {fresh('text, http')}")),
            ),
            "text, next page": (
                lambda: index.query(SearchRequest(text="a cat on a sofa", top=PAGE, skip=PAGE)),
                lambda c: post_search(c, body(search="a cat on a sofa", skip=PAGE, facets=[])),
            ),
            "more like this (stored id)": (
                lambda: index.query(SearchRequest(vector_queries=[VectorQuery(ids=[some_id])], top=PAGE,
                                                  facets=FACETS)),
                lambda c: post_search(c, body(vectorQueries=[{"kind": "id", "id": some_id}])),
            ),
            "new image upload (1024 px JPEG)": (
                lambda: index.query(image_query(uploads[fresh("image")])),
                lambda c: post_image(c, uploads[fresh("image, http")]),
            ),
            "image upload, next page": (
                lambda: index.query(image_query(uploads[0], skip=PAGE, facets=[])),
                lambda c: post_image(c, uploads[0], skip=PAGE, facets=[]),
            ),
            "thumbnail 320 px (cached)": (
                lambda: index.thumbnail(some_id, 320),
                lambda c: c.get(f"{base}/thumbnails/{some_id}", params={"index": "bench-api", "size": 320}),
            ),
        }
        results = {}
        try:
            with httpx.Client(headers={"api-key": key}, timeout=60) as client:
                for name, (in_process, over_http) in paths.items():
                    for _ in range(3):  # warm caches, models and connections
                        in_process()
                        assert over_http(client).status_code == 200
                    local, remote = [], []
                    for _ in range(args.runs):  # taking turns, so drift hits both alike
                        local.append(timed(in_process))
                        remote.append(timed(lambda: over_http(client)))
                    results[name] = {"in_process": summary(local), "http": summary(remote),
                                     "http_over_in_process_p50": round(statistics.median(remote)
                                                                       / statistics.median(local), 2)}
                    r = results[name]
                    print(f"{name:40s} in process p50 {r['in_process']['p50_ms']:7.2f} ms  p95 "
                          f"{r['in_process']['p95_ms']:7.2f}   HTTP p50 {r['http']['p50_ms']:7.2f} ms  p95 "
                          f"{r['http']['p95_ms']:7.2f}   x{r['http_over_in_process_p50']:.2f}", flush=True)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
        engine.delete_index("bench-api")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "rows": rows, "runs": args.runs, "page_size": PAGE, "results": results,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
