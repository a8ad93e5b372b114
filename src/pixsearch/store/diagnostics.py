"""What `pixsearch doctor` reads from the server: versions, Citus nodes and shards, settings, index sizes."""
from __future__ import annotations

from typing import Any

from psycopg import sql

from pixsearch.db import Database
from pixsearch.store.registry import list_indexes
from pixsearch.store.table import Table

SETTINGS = ("shared_buffers", "effective_cache_size", "maintenance_work_mem", "max_parallel_maintenance_workers",
            "max_parallel_workers", "work_mem", "max_connections")


def server_report(db: Database) -> dict[str, Any]:
    with db.connection() as conn:
        report: dict[str, Any] = {
            "server_version": db.server.server_version,
            "pgvector_version": db.server.pgvector_version,
            "citus_version": db.server.citus_version,
            "embedded": db.embedded,
            "settings": {},
        }
        for name in SETTINGS:
            value, unit = conn.execute("SELECT setting, unit FROM pg_settings WHERE name = %s", (name,)).fetchone()
            bytes_value = None
            if unit in ("8kB", "kB", "MB"):
                bytes_value = int(value) * {"8kB": 8192, "kB": 1024, "MB": 1024 * 1024}[unit]
            report["settings"][name] = {"value": conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))
                                        .fetchone()[0], "bytes": bytes_value}
        if db.server.citus_version:
            report["nodes"] = [
                {"name": row[0], "port": row[1], "role": row[2], "active": row[3]}
                for row in conn.execute("SELECT nodename, nodeport, noderole, isactive FROM pg_dist_node ORDER BY nodeid")
            ]
        indexes = []
        for spec in list_indexes(db):
            table = Table(spec)
            try:
                stats = table.stats.stats(conn)
            except Exception as exc:  # noqa: BLE001 - one broken index must not hide the rest of the report
                indexes.append({"name": spec.name, "error": str(exc)})
                conn.rollback()
                continue
            indexes.append({
                "name": spec.name, "rows": stats["rows"], "total_bytes": stats["total_bytes"],
                "ann_bytes": sum(f["ann_index_bytes"] or 0 for f in stats["vector_fields"].values()),
                "distributed": table.shape.distributed, "shards": stats.get("shards"), "nodes": stats.get("nodes"),
                "model": spec.model,
            })
        report["indexes"] = indexes
    return report
