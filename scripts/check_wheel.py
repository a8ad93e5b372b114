"""Run by scripts/check_wheel.sh with the Python of a clean venv that holds the installed wheel (standard library only).

Checks, in order: pixsearch is imported from that venv (not a checkout); no torch, CUDA or transformers package got
installed; `pixsearch demo` indexes the sample photos and finds the cat; `pixsearch serve` answers the search page,
each of its static files, /docs with its assets, and a search. Exits non-zero with the reason on the first failure.
"""
from __future__ import annotations

import importlib.metadata
import json
import queue
import re
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

# What the default install must never bring (PyPI's Linux torch alone pulls ~4 GB of nvidia-* libraries).
FORBIDDEN = re.compile(r"(torch|torchvision|triton|nvidia-.*|cuda-.*|sentence-transformers|transformers|open-clip-torch"
                       r"|rapidocr)", re.IGNORECASE)
BIN = Path(sys.executable).parent
SERVER_START_SECONDS = 120


def fail(message: str) -> None:
    print(f"wheel check FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def check_installed() -> None:
    import pixsearch

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    if site not in Path(pixsearch.__file__).resolve().parents:
        fail(f"pixsearch was imported from {pixsearch.__file__}, not from the venv's {site}")
    names = sorted({d.metadata["Name"] for d in importlib.metadata.distributions()})
    pulled = [n for n in names if FORBIDDEN.fullmatch(n)]
    if pulled:
        fail(f"the default install pulled {', '.join(pulled)}")
    print(f"installed from the wheel: pixsearch {importlib.metadata.version('pixsearch')}, {len(names)} distributions, "
          "none of torch/CUDA/transformers", flush=True)


def check_demo() -> None:
    started = time.monotonic()
    run = subprocess.run([str(BIN / "pixsearch"), "demo"], capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        fail(f"`pixsearch demo` exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    if "cat-chelsea.png" not in run.stdout:
        fail(f"`pixsearch demo` did not find the cat photo:\n{run.stdout[-3000:]}")
    print(f"pixsearch demo: ok in {time.monotonic() - started:.0f} s", flush=True)


def _get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, response.read()


def check_server() -> None:
    server = subprocess.Popen([str(BIN / "pixsearch"), "serve", "--anonymous", "--index", "demo", "--port", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stderr], daemon=True).start()
    try:
        deadline, seen, page = time.monotonic() + SERVER_START_SECONDS, [], None
        while page is None:  # the URL is announced once the port is bound; uvicorn accepts a moment later
            if server.poll() is not None or time.monotonic() > deadline:
                fail(f"`pixsearch serve` did not start: {''.join(seen)[-3000:]}")
            announced = re.search(r"search page: (http://127\.0\.0\.1:\d+)/", "".join(seen))
            if announced is None:
                try:
                    seen.append(lines.get(timeout=1))
                except queue.Empty:
                    pass
                continue
            base = announced.group(1)
            try:
                status, page = _get(f"{base}/")
            except urllib.error.URLError:
                time.sleep(0.2)
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.decode())
        if status != 200 or not assets:
            fail(f"the search page answered {status} and refers to no static file")
        for path in [*assets, "/docs", "/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"]:
            status, body = _get(base + path)
            if status != 200 or not body:
                fail(f"GET {path} answered {status} with {len(body)} bytes")
        status, body = _get(f"{base}/indexes/demo/docs/search", json.dumps({"search": "a cat", "top": 3}).encode())
        hits = json.loads(body)["value"]
        if status != 200 or not hits or "chelsea" not in json.dumps(hits[0]):
            fail(f"the search for a cat answered {status}: {body[:500]!r}")
        print(f"pixsearch serve: the page, {len(assets)} static files, /docs and a search: ok", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    check_installed()
    check_demo()
    check_server()
