#!/usr/bin/env python3
"""Start, stop and inspect a local Citus cluster (coordinator + workers) for trying pixsearch on Citus and for
benchmarks. A thin wrapper around tests/citus_cluster.py; run it with the project's Python:

    .venv/bin/python scripts/citus-cluster.py start --build     # builds Citus into the venv's server once (~1 min)
    export PIXSEARCH_DATABASE_URL=$(.venv/bin/python scripts/citus-cluster.py dsn)
    .venv/bin/python scripts/citus-cluster.py status
    .venv/bin/python scripts/citus-cluster.py stop               # or `delete` to also remove the data

The cluster lives in --base (default $PIXSEARCH_CITUS_BASE or /tmp/pixsearch-citus-UID) and keeps its ports and
passwords across stop/start.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from citus_cluster import FAST_SETTINGS, CitusUnavailable, ClusterError, LocalCitusCluster, build_citus  # noqa: E402


def default_base() -> Path:
    return Path(os.environ.get("PIXSEARCH_CITUS_BASE") or Path(tempfile.gettempdir()) / f"pixsearch-citus-{os.getuid()}")


def existing_workers(base: Path, requested: int | None) -> int:
    """The worker count of the cluster already in ``base`` (the CLI's later commands need not repeat it)."""
    state = base / "cluster.json"
    if state.exists():
        return len(json.loads(state.read_text())["ports"]) - 1
    return requested or 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, default=default_base(), help="cluster directory (default: %(default)s)")
    parser.add_argument("--pg-config", type=Path, help="pg_config of the PostgreSQL to use (default: the venv's)")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="initialise if needed, start every node, print the DSN")
    start.add_argument("--workers", type=int, help="number of workers for a new cluster (default 2)")
    start.add_argument("--build", action="store_true", help="build Citus into the server first if missing")
    start.add_argument("--fast", action="store_true", help="fsync=off etc.: faster, not crash-safe")
    start.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                       help="extra postgresql.conf setting for every node (repeatable)")
    sub.add_parser("stop", help="stop every node")
    sub.add_parser("status", help="print the nodes as JSON: name, port, pid (null when stopped), data_dir")
    sub.add_parser("dsn", help="print the pixsearch URL of the coordinator")
    sub.add_parser("delete", help="stop every node and remove the cluster directory")
    args = parser.parse_args(argv)

    if args.command != "start" and not (args.base / "cluster.json").exists():
        print(f"no cluster in {args.base}", file=sys.stderr)
        return 0 if args.command in ("stop", "delete") else 1
    settings = dict(FAST_SETTINGS) if getattr(args, "fast", False) else {}
    for item in getattr(args, "set", []):
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set wants NAME=VALUE, got {item!r}")
        settings[name.strip()] = value.strip()
    try:
        if getattr(args, "build", False):
            build_citus(args.pg_config)
        cluster = LocalCitusCluster(
            args.base, existing_workers(args.base, getattr(args, "workers", None)),
            pg_config=args.pg_config, settings=settings,
        )
        if args.command == "start":
            began = time.monotonic()
            cluster.start()
            print(f"started {len(cluster.nodes)} nodes in {time.monotonic() - began:.1f} s", file=sys.stderr)
            print(cluster.dsn)
        elif args.command == "stop":
            cluster.stop()
        elif args.command == "delete":
            cluster.delete()
        elif args.command == "status":
            print(json.dumps(cluster.status(), indent=2))
        elif args.command == "dsn":
            print(cluster.dsn)
    except (CitusUnavailable, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
