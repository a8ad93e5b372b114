"""`pixsearch doctor`: what the server can do and which settings hold pixsearch back, with advice."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pixsearch.store.diagnostics import server_report

if TYPE_CHECKING:
    from pixsearch.service.engine import Engine

MB = 1024 * 1024


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text or "")[:3])


def diagnose(engine: "Engine") -> dict[str, Any]:
    report = server_report(engine.db)
    pgvector = _version(report["pgvector_version"])
    report["features"] = {
        "halfvec": pgvector >= (0, 7, 0),
        "binary_quantize": pgvector >= (0, 7, 0),
        "iterative_scans": pgvector >= (0, 8, 0),
        "distribution": report["citus_version"] is not None,
    }
    advice: list[str] = []
    settings = report["settings"]
    ann_bytes = sum(i.get("ann_bytes") or 0 for i in report["indexes"])
    shared = settings["shared_buffers"]["bytes"] or 0
    if ann_bytes > shared:
        advice.append(
            f"the ANN indexes take {ann_bytes / MB:,.0f} MB but shared_buffers is {shared / MB:,.0f} MB: searches will "
            f"read from disk. Raise shared_buffers to at least {ann_bytes / MB * 1.2:,.0f} MB (restart needed)"
            + (" on every node" if report["citus_version"] else "") + "."
        )
    if int(settings["max_parallel_workers"]["value"]) == 0:
        advice.append("max_parallel_workers is 0: pgvector cannot build HNSW indexes in parallel; raise it.")
    advice.append("maintenance_work_mem and max_parallel_maintenance_workers are raised by pixsearch for each ANN "
                  "build (sized to the graph, within 1/4 of RAM; workers: cores - 1); the server values above are "
                  "what other clients get.")
    if report["citus_version"]:
        inactive = [f"{n['name']}:{n['port']}" for n in report.get("nodes", []) if not n["active"]]
        if inactive:
            advice.append(f"inactive Citus nodes: {', '.join(inactive)} — their shards cannot be searched.")
        local = [i["name"] for i in report["indexes"] if not i.get("distributed") and "error" not in i]
        if local:
            advice.append(f"on this Citus coordinator, {', '.join(local)} {'is' if len(local) == 1 else 'are'} not "
                          "distributed: pixsearch indexes distribute NAME spreads one across the workers.")
        advice.append("on distributed indexes ef_search applies per shard: each shard returns its own top k and the "
                      "coordinator merges them, so recall at a given ef_search is at least that of one node.")
    report["advice"] = advice
    return report
