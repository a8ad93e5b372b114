"""Index management and the vector engine from the command line: indexes, vectors, stats, evaluate, tune."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import typer
from rich.progress import BarColumn, Progress, TextColumn
from rich.markup import escape
from rich.table import Table

from pixsearch.cli.common import IndexOption, caption_cost, err, fail, open_engine, out, print_json
from pixsearch.service.captioning import caption_summary
from pixsearch.limits import MAX_EVALUATION_QUERIES, MAX_WINDOW
from pixsearch.store import Field, IndexSpec, QueryOptions, VectorField
from pixsearch.store.schema import ALGORITHMS, FIELD_TYPES, METRICS, STORAGES

indexes_app = typer.Typer(no_args_is_help=True, help="Create, list, inspect, rename, rebuild and delete indexes.")
vectors_app = typer.Typer(no_args_is_help=True, help="Add, get and remove precomputed embeddings (no model).")

FIELD_FLAGS = ("filterable", "sortable", "facetable", "searchable")


def _spec_json(spec: IndexSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "kind": spec.kind,
        "key": spec.key_field,
        "fields": [f.__dict__ for f in spec.fields],
        "vector_fields": [vf.to_json() for vf in spec.vector_fields],
        "settings": spec.settings,
    }


def parse_field(text: str) -> Field:
    """`name:type[:flag,flag]`, e.g. `category:string:filterable,facetable`."""
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 3:
        raise ValueError(f"--field {text!r}: use name:type[:flags], types {', '.join(FIELD_TYPES)}")
    flags = [f for f in parts[2].split(",") if f] if len(parts) == 3 else []
    unknown = sorted(set(flags) - set(FIELD_FLAGS))
    if unknown:
        raise ValueError(f"--field {text!r}: unknown flag(s) {', '.join(unknown)}; known: {', '.join(FIELD_FLAGS)}")
    return Field(parts[0], parts[1], **{flag: True for flag in flags})


def _vector_params(m: int | None, ef_construction: int | None, lists: int | None, oversample: int | None) -> dict:
    given = {"m": m, "ef_construction": ef_construction, "lists": lists, "oversample": oversample}
    return {key: value for key, value in given.items() if value is not None}


@indexes_app.command("create")
def create_cmd(
    name: str = typer.Argument(..., help="Index name: lowercase letters, digits, '-' and '_'."),
    photos: bool = typer.Option(False, "--photos", help="A photo index for `pixsearch index` (vectors from the model)."),
    dims: Optional[int] = typer.Option(None, help="Dimensions of the vector field (precomputed-vector indexes)."),
    vector_field: str = typer.Option("vector", "--vector-field", help="Name of the vector field."),
    metric: Optional[str] = typer.Option(None, help=f"One of {', '.join(METRICS)}."),
    storage: str = typer.Option("vector", help=f"One of {', '.join(STORAGES)} (bit = binary quantisation)."),
    algorithm: str = typer.Option("hnsw", help=f"One of {', '.join(ALGORITHMS)}."),
    m: Optional[int] = typer.Option(None, help="HNSW: neighbours per node (default 16)."),
    ef_construction: Optional[int] = typer.Option(None, help="HNSW: build-time candidate list (default 64)."),
    lists: Optional[int] = typer.Option(None, help="IVFFlat: lists (default rows/1000, sqrt(rows) over 1M, >= 10)."),
    oversample: Optional[int] = typer.Option(None, help="bit/halfvec: candidates per hit re-ranked exactly."),
    field: List[str] = typer.Option([], "--field", help="Metadata field name:type[:filterable,sortable,...]."),
    schema: Optional[Path] = typer.Option(None, help="JSON file with {fields: [...], vector_fields: [...]}."),
    model: Optional[str] = typer.Option(None, "--model", help="Model of a photo index (default: the configured one)."),
    distributed: Optional[bool] = typer.Option(
        None, "--distributed/--local", help="On a Citus coordinator: shard it across the workers (default: the "
        "`distribute` setting)."
    ),
    shards: Optional[int] = typer.Option(None, "--shards", min=0, help="Shards of a distributed index (0: Citus' default)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create an index. IVFFlat indexes are built later, from data: `pixsearch indexes rebuild NAME`."""
    params = _vector_params(m, ef_construction, lists, oversample)
    with open_engine(shards=shards) as engine:
        if photos:
            options = {"algorithm": algorithm, "storage": storage, "params": params}
            idx = engine.create_photo_index(name, model=model, distributed=distributed, **options)
        elif schema is not None:
            try:
                raw = json.loads(schema.read_text())
            except (OSError, ValueError) as exc:
                raise fail(f"cannot read schema {schema}: {exc}") from None
            fields = [Field(**f) for f in raw.get("fields", [])]
            vfs = [VectorField(**vf) for vf in raw.get("vector_fields", [])]
            idx = engine.create_index(name, vfs, fields, key_field=raw.get("key", "id"), distributed=distributed)
        else:
            if dims is None:
                raise fail("give --dims for a precomputed-vector index, --photos for a photo index, or --schema FILE")
            vf = VectorField(vector_field, dims, metric=metric or ("hamming" if storage == "bit" else "cosine"),
                             storage=storage, algorithm=algorithm, params=params)
            idx = engine.create_index(name, [vf], [parse_field(f) for f in field], distributed=distributed)
    if as_json:
        print_json(_spec_json(idx.spec))
    else:
        err.print(f"created index [bold]{idx.name}[/] ({idx.spec.kind})", highlight=False)


@indexes_app.command("distribute")
def distribute_cmd(
    name: str = typer.Argument(...),
    shards: Optional[int] = typer.Option(None, "--shards", min=0, help="Shard count (0: Citus' citus.shard_count)."),
) -> None:
    """Shard an index across the workers of a Citus cluster (PIXSEARCH_DATABASE_URL names the coordinator): its
    rows move into the shards, and every ANN index exists on every shard."""
    with open_engine() as engine:
        stats = engine.distribute_index(name, shards).stats()
    err.print(f"distributed {escape(name)}: {stats['rows']} rows in {stats['shards']} shards on {stats['nodes']} nodes",
              highlight=False)


@indexes_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """List indexes with their vector fields."""
    with open_engine() as engine:
        specs = engine.list_indexes()
    if as_json:
        print_json([_spec_json(s) for s in specs])
        return
    table = Table(show_edge=False)
    captions = {spec.name: caption_summary(spec) for spec in specs}
    for column in ("name", "kind", "vector fields") + (("generated captions",) if any(captions.values()) else ()):
        table.add_column(column)
    for spec in specs:
        vfs = "; ".join(f"{v.name} {v.dims}-d {v.storage} {v.metric} {v.algorithm}" for v in spec.vector_fields)
        summary = captions[spec.name]
        cost = f"{summary['captioner'] or 'off'}: {caption_cost(summary)}" if summary else "-"
        table.add_row(spec.name, spec.kind, vfs, *((cost,) if any(captions.values()) else ()))
    out.print(table)


@indexes_app.command("info")
def info_cmd(name: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """Schema, settings and sizes of one index."""
    with open_engine() as engine:
        idx = engine.index(name)
        info = {**_spec_json(idx.spec), "stats": idx.stats()}
    if as_json:
        print_json(info)
    else:
        out.print_json(json.dumps(info, default=str))


@indexes_app.command("rename")
def rename_cmd(name: str, new_name: str) -> None:
    """Rename an index (its table and ANN indexes follow)."""
    with open_engine() as engine:
        engine.rename_index(name, new_name)
    err.print(f"renamed {name} -> {new_name}", highlight=False)


@indexes_app.command("delete")
def delete_cmd(name: str, yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask.")) -> None:
    """Delete an index: drops its table and ANN indexes; nothing else is touched."""
    if not yes and not typer.confirm(f"delete index {name!r} and all its rows?", err=True):
        raise typer.Exit(1)
    with open_engine() as engine:
        engine.delete_index(name)
    err.print(f"deleted index {name}", highlight=False)


@indexes_app.command("rebuild")
def rebuild_cmd(
    name: str,
    field: Optional[str] = typer.Option(None, help="Only this vector field."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """(Re)build ANN indexes from the current rows (IVFFlat learns its lists here), with build progress."""
    with open_engine() as engine:
        idx = engine.index(name)
        with Progress(TextColumn("[bold]building[/] {task.fields[phase]}"), BarColumn(), console=err) as bar:
            task = bar.add_task("build", total=None, phase="")

            def show(state: dict) -> None:
                done, total = state.get("blocks_done") or 0, state.get("blocks_total") or 0
                if not total:
                    done, total = state.get("tuples_done") or 0, state.get("tuples_total") or 0
                bar.update(task, phase=state.get("phase") or "", completed=done, total=total or None)

            built = idx.build(field, progress=show)
    if as_json:
        print_json(built)
    for info in built:
        err.print(
            f"built {info['algorithm']} on {name}.{info['field']}: {info['rows']} rows"
            + (f", {info['lists']} lists" if info["lists"] else "")
            + f", {info['seconds']:.1f} s, maintenance_work_mem {info['maintenance_work_mem_mb']} MB",
            highlight=False,
        )


def _load_ids(ids_file: Optional[Path], count: int) -> list[str]:
    if ids_file is None:
        return [str(i) for i in range(count)]
    ids = [line.strip() for line in ids_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(ids) != count:
        raise ValueError(f"{ids_file} has {len(ids)} ids for {count} vectors")
    return ids


@vectors_app.command("add")
def vectors_add_cmd(
    name: str = typer.Argument(..., help="Index name."),
    vectors_file: Path = typer.Argument(..., help=".npy file with an (n, dims) float array."),
    ids: Optional[Path] = typer.Option(None, help="Text file with one id per row (default: row numbers)."),
    documents: Optional[Path] = typer.Option(None, help="JSON Lines file with one metadata object per row."),
    field: Optional[str] = typer.Option(None, help="Vector field (default: the index's only one)."),
) -> None:
    """Upsert precomputed embeddings from a .npy file (COPY BINARY, batched transactions)."""
    try:
        array = np.load(vectors_file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read {vectors_file}: {exc}") from None
    with open_engine() as engine:
        idx = engine.index(name)
        keys = _load_ids(ids, len(array))
        docs = None
        if documents is not None:
            docs = [json.loads(line) for line in documents.read_text(encoding="utf-8").splitlines() if line.strip()]
        target = idx.spec.vector_field(field).name
        with Progress(TextColumn("[bold]adding"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      console=err) as bar:
            task = bar.add_task("add", total=len(array))
            written = idx.add_vectors(keys, {target: array}, docs, progress=lambda n: bar.advance(task, n))
    err.print(f"{written} vectors upserted into {name}.{target}", highlight=False)


@vectors_app.command("get")
def vectors_get_cmd(
    name: str, ids: List[str], with_vectors: bool = typer.Option(True, "--vectors/--no-vectors")
) -> None:
    """Print stored documents (and vectors) as a JSON object keyed by id; missing ids are left out."""
    with open_engine() as engine:
        found = engine.index(name).get(ids, vectors=with_vectors)
    print_json({key: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in doc.items()}
                for key, doc in found.items()})


@vectors_app.command("export")
def vectors_export_cmd(
    name: str = typer.Argument(..., help="Index name."),
    out_file: Path = typer.Argument(..., help=".npy file to write: an (n, dims) float32 array, in id order."),
    ids_out: Optional[Path] = typer.Option(None, "--ids-out", help="Also write the ids, one per line, in that order."),
    field: Optional[str] = typer.Option(None, "--field", help="Vector field (default: the index's only one)."),
) -> None:
    """Export every stored vector of a field (streamed with a binary cursor)."""
    with open_engine() as engine:
        started = time.perf_counter()
        written = engine.index(name).export_vectors(out_file, field=field, ids_path=ids_out)
    err.print(f"{written} vectors written to {escape(str(out_file))} in {time.perf_counter() - started:.1f} s",
              highlight=False)


@vectors_app.command("remove")
def vectors_remove_cmd(name: str, ids: List[str]) -> None:
    """Remove documents by id."""
    with open_engine() as engine:
        removed = engine.index(name).remove(ids)
    err.print(f"removed {removed} of {len(ids)}", highlight=False)


def stats_cmd(index: Optional[str] = IndexOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Rows, dimensions, model, table bytes and ANN index bytes per vector field."""
    with open_engine(index) as engine:
        stats = engine.index(index).stats()
    if as_json:
        print_json(stats)
        return
    out.print(f"[bold]{stats['index']}[/]: {stats['rows']} rows, table {_mb(stats['table_bytes'])}, "
              f"total {_mb(stats['total_bytes'])}", highlight=False)
    if stats.get("captions"):
        summary = stats["captions"]
        out.print(f"generated captions ({summary['captioner'] or 'captioner off'}), so far: {caption_cost(summary)}",
                  highlight=False)
    table = Table(show_edge=False)
    for column in ("field", "dims", "storage", "metric", "algorithm", "model", "ANN index", "tuned"):
        table.add_column(column)
    for name, f in stats["vector_fields"].items():
        ann = _mb(f["ann_index_bytes"]) if f["ann_index_bytes"] is not None else "not built"
        tuned = ", ".join(f"{k}={v}" for k, v in (f["tuned"] or {}).items() if k in ("ef_search", "probes", "recall"))
        table.add_row(name, str(f["dims"]), f["storage"], f["metric"], f["algorithm"], f["model_id"] or "-", ann,
                      tuned or "-")
    out.print(table)


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024 / 1024:.1f} MB"


def evaluate_cmd(
    index: Optional[str] = IndexOption,
    field: Optional[str] = typer.Option(None, help="Vector field (default: the only one, else give it)."),
    k: int = typer.Option(10, "--k", "-k", min=1, max=MAX_WINDOW),
    sample: int = typer.Option(100, min=1, max=MAX_EVALUATION_QUERIES, help="Stored vectors used as queries."),
    ef_search: Optional[int] = typer.Option(None, help="HNSW ef_search to evaluate (default: tuned or 40)."),
    probes: Optional[int] = typer.Option(None, help="IVFFlat probes to evaluate (default: tuned or sqrt(lists))."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Recall@k of the ANN index against exact search, and latency per query."""
    with open_engine(index) as engine:
        idx = engine.index(index)
        result = idx.evaluate(field=field or _default_field(idx.spec), k=k, sample=sample,
                              options=QueryOptions(ef_search=ef_search, probes=probes))
    if as_json:
        print_json(result.to_json())
    else:
        out.print(f"{idx.name}.{result.field}: recall@{k} {result.recall:.3f} over {result.queries} queries; "
                  f"ANN p50 {result.ann_ms_p50:.2f} ms (p95 {result.ann_ms_p95:.2f}), exact p50 "
                  f"{result.exact_ms_p50:.2f} ms"
                  + ("" if result.index_used else " (the planner chose an exact scan at these settings)"),
                  highlight=False)


def tune_cmd(
    target_recall: float = typer.Option(0.95, "--target-recall", min=0.01, max=1.0),
    index: Optional[str] = IndexOption,
    field: Optional[str] = typer.Option(None),
    k: int = typer.Option(10, "--k", "-k", min=1, max=MAX_WINDOW),
    sample: int = typer.Option(100, min=1, max=MAX_EVALUATION_QUERIES),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Find the smallest ef_search / probes reaching the target recall and store it for later searches."""
    with open_engine(index) as engine:
        idx = engine.index(index)
        report = idx.tune(target_recall, field=field or _default_field(idx.spec), k=k, sample=sample)
    if as_json:
        print_json(report)
        return
    for tried in report["tried"]:
        note = "" if tried["index_used"] else " (planner chose an exact scan)"
        out.print(f"  {tried['settings']}: recall {tried['recall']:.3f}, p50 {tried['ann_ms_p50']:.2f} ms{note}",
                  highlight=False)
    tuned = report["tuned"]
    verdict = "reached" if tuned["reached"] else "NOT reached (best setting stored)"
    knob = {k: v for k, v in tuned.items() if k in ("ef_search", "probes")}
    out.print(f"target recall {target_recall} {verdict}: stored {knob} for {idx.name}.{report['field']}",
              highlight=False)


def _default_field(spec: IndexSpec) -> str:
    """Photo indexes default to the text-search field; others to their only vector field."""
    if spec.kind == "photos" and any(vf.name == "semantic" for vf in spec.vector_fields):
        return "semantic"
    return spec.vector_field(None).name
