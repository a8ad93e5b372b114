"""The image stage on Ray vs here, and parallel writers into Citus.

    python bench/distributed.py [--images 500] [--side 1600] [--rows 4000] [--skip-citus]

1. The same --images photos (the sample photos scaled to --side px and made distinct, JPEG q90) indexed locally,
   through a 2-node local Ray cluster (tests/ray_cluster.py: a head and a second node, 1 CPU each, on this machine's
   cores) whose workers read the photos, and through the same cluster with the driver reading every photo and
   sending the bytes through Ray's object store (ray_reads driver: what a node that cannot see the folder gets),
   all with the default model, after a warm-up; prints images/s, the ratios, the stage split the pipeline
   records (read+decode, embed, write; seconds summed over the workers) and, separately, how long reading and hashing
   alone takes and how long joining the cluster and starting the actors takes.
2. Writers into Citus (tests/citus_cluster.py: a coordinator and two workers): --rows synthetic photo rows (the
   vectors of the index's model, random) written in batches of 16 by this process (1 writer, as ingest writes) and by
   4 Ray actors writing with COPY themselves (4 writers); rows/s each.
Writes bench/results/distributed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from pixsearch.config import Settings  # noqa: E402
from pixsearch.ingest.decode import content_hash, read_file  # noqa: E402
from pixsearch.samples import sample_files  # noqa: E402
from pixsearch.service import Engine  # noqa: E402
from ray_cluster import LocalRayCluster  # noqa: E402


def make_photos(folder: Path, count: int, side: int) -> list[Path]:
    """count distinct photo-sized JPEGs: the sample photos scaled to `side`, each with a small mark of its own."""
    sources = [Image.open(p).convert("RGB") for _, p in sorted(sample_files().items())]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        scale = side / max(src.size)
        img = src.resize((round(src.width * scale), round(src.height * scale)), Image.Resampling.BICUBIC)
        ImageDraw.Draw(img).rectangle((4, 4, 24, 24), fill=(i % 251, (i * 7) % 251, (i * 13) % 251))
        path = folder / f"photo{i:04d}.jpg"
        img.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def index_run(engine: Engine, name: str, folder: Path, ray: str | None) -> dict:
    t0 = time.perf_counter()
    report = engine.index(name, create=True).add_paths([folder], ray=ray)
    seconds = time.perf_counter() - t0
    assert not report.failed, report.failed[:3]
    return {"images": report.added, "seconds": round(seconds, 2), "images_per_s": round(report.added / seconds, 2),
            "stage_seconds": {k: round(v, 2) for k, v in report.stage_seconds.items()}}


def stage_startup(engine: Engine, address: str, folder: Path) -> float:
    """Joining the cluster, checking it and starting one actor per node with the model loaded, then leaving."""
    from pixsearch.ingest.distributed import RayOptions, open_image_stage
    from pixsearch.ingest.stage import StageOptions

    t0 = time.perf_counter()
    with open_image_stage(engine.embedder, StageOptions(), RayOptions(address, str(engine.settings.cache_dir)),
                          [folder]):
        pass
    return round(time.perf_counter() - t0, 2)


def read_seconds(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for path in paths:
        content_hash(read_file(str(path)))
    return round(time.perf_counter() - t0, 2)


# -- writers ----------------------------------------------------------------------------------------------------------
def synthetic_records(spec, count: int, seed: int) -> list:
    from pixsearch.store import PhotoRecord

    rng = np.random.default_rng(seed)
    fields = [vf for vf in spec.vector_fields if vf.model_id]
    out = []
    for i in range(count):
        path = f"/bench/w{seed}/photo{i:06d}.jpg"
        vectors = {}
        for vf in fields:
            v = rng.normal(size=vf.dims).astype(np.float32)
            vectors[vf.name] = v / np.linalg.norm(v)
        out.append(PhotoRecord(id=uuid.uuid4().hex, path=path, folder=os.path.dirname(path),
                               filename=os.path.basename(path), content_hash=uuid.uuid4().hex, size_bytes=1000 + i,
                               mtime_ns=i, format="JPEG", width=1600, height=1200, vectors=vectors))
    return out


class Writer:
    """A Ray actor writing its share of the rows itself (COPY, 16 rows a transaction, as ingest writes)."""

    def __init__(self, home: str, dsn: str, name: str):
        self.engine = Engine(Settings.load(home=home, database_url=dsn))
        self.store = self.engine.index(name).store

    def write(self, count: int, seed: int) -> float:
        records = synthetic_records(self.store.spec, count, seed)
        t0 = time.perf_counter()
        for start in range(0, len(records), 16):
            self.store.write_photos(records[start:start + 16])
        return time.perf_counter() - t0


def writers_bench(rows: int, address: str, home: Path) -> dict:
    import ray
    from citus_cluster import FAST_SETTINGS, LocalCitusCluster, citus_unavailable_reason

    reason = citus_unavailable_reason(build=True)
    if reason:
        return {"skipped": reason}
    base = Path(tempfile.mkdtemp(prefix="bench-citus-"))
    cluster = LocalCitusCluster(base, workers=2, settings={**FAST_SETTINGS, "citus.shard_count": 8})
    cluster.start()
    try:
        dsn = cluster.dsn
        out = {}
        with Engine(Settings.load(home=home, database_url=dsn, distribute=True)) as engine:
            for writers in (1, 4):
                name = f"writers{writers}-" + uuid.uuid4().hex[:6]
                idx = engine.index(name, create=True)
                assert idx.store.distributed
                if writers == 1:
                    records = synthetic_records(idx.spec, rows, 1)
                    t0 = time.perf_counter()
                    for start in range(0, rows, 16):
                        idx.store.write_photos(records[start:start + 16])
                    wall = time.perf_counter() - t0
                else:
                    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
                    try:
                        actors = [ray.remote(Writer).options(num_cpus=0).remote(str(home), dsn, name)
                                  for _ in range(writers)]
                        ray.get([a.write.remote(8, 100 + i) for i, a in enumerate(actors)])  # connected, warm
                        t0 = time.perf_counter()
                        ray.get([a.write.remote(rows // writers, 200 + i) for i, a in enumerate(actors)])
                        wall = time.perf_counter() - t0
                    finally:
                        ray.shutdown()
                count = engine.index(name).count()
                out[f"{writers}_writers"] = {"rows": count, "seconds": round(wall, 2),
                                             "rows_per_s": round(rows / wall, 1)}
        return out
    finally:
        cluster.delete()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--side", type=int, default=1600)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=2, help="local and Ray runs alternate this many times each "
                        "(the machine is shared: the best of each is compared)")
    parser.add_argument("--skip-citus", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    home = work / "home"
    os.environ["PIXSEARCH_HOME"] = str(home)
    folder = work / "photos"
    paths = make_photos(folder, args.images, args.side)
    warm = work / "warm"
    make_photos(warm, 16, args.side)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)}
    results: dict = {"machine": {"cores": os.cpu_count(), "python": platform.python_version()},
                     "images": args.images, "side": args.side}
    with LocalRayCluster(nodes=2, env=env) as cluster, Engine(Settings.load(home=home)) as engine, \
            Engine(Settings.load(home=home, ray_reads="driver"), embedder=engine.embedder) as sending:
        engine.index("warm", create=True).add_paths([warm])  # the model loaded and its ONNX export cached
        results["read_and_hash_seconds"] = read_seconds(paths)
        results["ray_startup_seconds"] = stage_startup(engine, cluster.address, folder)
        runs: dict[str, list] = {"local": [], "ray": [], "ray_driver_reads": []}
        for turn in range(args.repeat):
            runs["local"].append(index_run(engine, f"local{turn}", folder, None))
            runs["ray"].append(index_run(engine, f"ray{turn}", folder, cluster.address))
            runs["ray_driver_reads"].append(index_run(sending, f"sent{turn}", folder, cluster.address))
            print(json.dumps({k: v[-1] for k, v in runs.items()}), flush=True)
        results["runs"] = runs
        for kind in runs:
            results[kind] = max(runs[kind], key=lambda r: r["images_per_s"])
        results["ratio_driver_reads_to_workers"] = round(
            results["ray_driver_reads"]["images_per_s"] / results["ray"]["images_per_s"], 3)
        results["ray"]["images_per_s_without_startup"] = round(
            args.images / (results["ray"]["seconds"] - results["ray_startup_seconds"]), 2)
        results["ratio"] = round(results["ray"]["images_per_s"] / results["local"]["images_per_s"], 3)
        results["ratio_without_startup"] = round(
            results["ray"]["images_per_s_without_startup"] / results["local"]["images_per_s"], 3)
        print(json.dumps(results, indent=1), flush=True)
        if not args.skip_citus:
            results["citus_writers"] = writers_bench(args.rows, cluster.address, home)
    print(json.dumps(results, indent=1))
    out = ROOT / "bench" / "results" / "distributed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    for made in (folder, warm):  # the photos; the home (its embedded PostgreSQL stops at exit) stays in the temp dir
        shutil.rmtree(made, ignore_errors=True)


if __name__ == "__main__":
    main()
