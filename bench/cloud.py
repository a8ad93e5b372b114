"""Object store ingest benchmark: the same photos indexed from Azurite (Azure Blob Storage's emulator, on loopback)
and from local disk, end to end, and the rerun with nothing changed.

    python bench/cloud.py [--objects 1000] [--side 1024] [--batch-size 16]

Makes --objects photo-like JPEGs (the sample photos scaled to --side px, varied so no two are identical), uploads
them to a fresh Azurite container, warms the model, then measures with one embedded PostgreSQL:
  * local: Index.add_paths on the folder;
  * Azurite: Index.add_paths on az://bench/photos (listing, downloads ahead of decoding, decode, embed, write);
  * rerun: az://bench/photos again with nothing changed (one listing, no object downloaded);
and prints images/s for both, their ratio (the goal: >= 0.9), and the rerun time. Writes bench/results/cloud.json.

    python bench/cloud.py --rerun-only [--objects 1000] [--side 64] [--reruns 5]

measures only the rerun with nothing changed (small photos, no local run; every rerun timed, with the load
average, since a shared machine's load moves these numbers): writes bench/results/cloud-rerun.json.
Azurite is installed by `make tools/azurite`; it is started here on a free 127.0.0.1 port with a temporary workspace.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from ingest import make_photos  # noqa: E402 - bench/ingest.py's photo maker: the same kind of files
from object_stores import azurite, azurite_connection_string  # noqa: E402 - the tests' Azurite launcher

from pixsearch.config import Settings  # noqa: E402
from pixsearch.service import Engine  # noqa: E402


def _upload(connection_string: str, container: str, files: list[Path]) -> float:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(connection_string)
    service.create_container(container)
    client = service.get_container_client(container)
    t0 = time.perf_counter()
    for path in files:
        client.upload_blob(f"photos/{path.name}", path.read_bytes(), overwrite=True)
    return time.perf_counter() - t0


def _timed(index, source) -> tuple[float, object]:
    t0 = time.perf_counter()
    report = index.add_paths([source])
    return time.perf_counter() - t0, report


def rerun_only(args, files: list[Path], work: Path) -> dict:
    """Index the objects once, then time `--reruns` reruns with nothing changed."""
    emulator = azurite()
    store = next(emulator)
    try:
        connection = azurite_connection_string(store.direct_port)
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = connection
        _upload(connection, "bench", files)
        with Engine(Settings.load(home=work / "home", batch_size=args.batch_size)) as engine:
            index = engine.index("bench-cloud", create=True)
            first = index.add_paths(["az://bench/photos"])
            assert first.added == len(files) and not first.failed, (first.added, first.failed[:3])
            times = []
            for _ in range(args.reruns):
                seconds, rerun = _timed(index, "az://bench/photos")
                assert rerun.unchanged == len(files), rerun.unchanged
                times.append(round(seconds, 3))
            lookups = []  # the rerun's lookup of local paths to fold (ingest/changes.py fold_spellings), alone
            for _ in range(args.reruns):
                t0 = time.perf_counter()
                rows = len(index.store.paths_not_normal())
                lookups.append(round(time.perf_counter() - t0, 4))
    finally:
        emulator.close()
    return {"objects": len(files), "rerun_seconds": times, "median": statistics.median(times),
            "paths_not_normal": {"rows": rows, "seconds": lookups, "median": statistics.median(lookups)},
            "load_average": os.getloadavg(), "cores": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--side", type=int, help="long side in px (default 1024; 64 with --rerun-only)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rerun-only", action="store_true", help="time only reruns with nothing changed")
    parser.add_argument("--reruns", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pixsearch-bench-cloud-"))
    if args.rerun_only:
        files = make_photos(work / "photos", args.objects, args.side or 64)
        results = rerun_only(args, files, work)
        print(f"rerun, nothing changed, {len(files)} objects: {results['rerun_seconds']} s "
              f"(median {results['median']} s; load average {results['load_average']}); "
              f"paths_not_normal: {results['paths_not_normal']}")
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "cloud-rerun.json").write_text(json.dumps(results, indent=2) + "\n")
        return
    args.side = args.side or 1024
    files = make_photos(work / "photos", args.objects, args.side)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    print(f"{len(files)} photos, {megabytes:.0f} MB, long side {args.side} px", flush=True)
    results: dict = {"objects": len(files), "megabytes": round(megabytes, 1), "side": args.side,
                     "batch_size": args.batch_size, "machine": platform.platform(), "cores": os.cpu_count()}
    emulator = azurite()
    store = next(emulator)
    try:
        connection = azurite_connection_string(store.direct_port)  # straight to Azurite, not through the proxy
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = connection
        results["upload_seconds"] = round(_upload(connection, "bench", files), 2)
        home = work / "home"
        with Engine(Settings.load(home=home, batch_size=args.batch_size)) as engine:
            warm = engine.index("warm-up", create=True)
            warm.add_paths(files[:args.batch_size])  # model loaded, ONNX exported, database warm
            local_s, local = _timed(engine.index("bench-local", create=True), work / "photos")
            cloud_s, cloud = _timed(engine.index("bench-cloud", create=True), "az://bench/photos")
            rerun_s, rerun = _timed(engine.index("bench-cloud"), "az://bench/photos")
        assert not local.failed and not cloud.failed, (local.failed[:3], cloud.failed[:3])
        assert cloud.added == len(files) and rerun.unchanged == len(files), (cloud.added, rerun.unchanged)
        results.update({
            "local": {"seconds": round(local_s, 2), "images_per_s": round(len(files) / local_s, 1),
                      "stages": local.to_json()["stage_seconds"]},
            "azurite": {"seconds": round(cloud_s, 2), "images_per_s": round(len(files) / cloud_s, 1),
                        "stages": cloud.to_json()["stage_seconds"]},
            "ratio": round(local_s / cloud_s, 3),
            "rerun_unchanged_seconds": round(rerun_s, 3),
        })
    finally:
        emulator.close()
    print(f"local disk : {results['local']['images_per_s']:7.1f} images/s ({results['local']['seconds']} s)")
    print(f"Azurite    : {results['azurite']['images_per_s']:7.1f} images/s ({results['azurite']['seconds']} s)")
    print(f"ratio      : {results['ratio']:.2f} (goal >= 0.9)")
    print(f"rerun, nothing changed: {results['rerun_unchanged_seconds']:.3f} s for {len(files)} objects")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "cloud.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
