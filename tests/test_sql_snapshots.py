"""SQL snapshots: every statement store/ issues for an index, rendered for four index shapes into tests/sql/*.sql.

A statement that changes without its snapshot fails here; the diff is the review. Regenerate with
    PIXSEARCH_UPDATE_SQL=1 pytest tests/test_sql_snapshots.py
and commit the .sql files with the change. Rendering needs no database (psycopg renders without a connection).
"""
from __future__ import annotations

import ast
import difflib
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pixsearch.models.offline import OFFLINE_PHOTO_FIELDS, OfflineEmbedder
from pixsearch.service.captions import caption_vector_field
from pixsearch.store import PHOTO_FIELDS, Field, IndexSpec, VectorField
from pixsearch.store.filters import And, AnyEq, Compare
from pixsearch.store.schema import table_name_for
from pixsearch.store.sql_catalog import render, statements

SNAPSHOTS = Path(__file__).parent / "sql"
UPDATE = os.environ.get("PIXSEARCH_UPDATE_SQL") == "1"
DOCUMENT_FIELDS = (
    Field("title", "string", searchable=True),
    Field("category", "int", filterable=True, sortable=True, facetable=True),
    Field("labels", "string[]", filterable=True, facetable=True),
)


def _photo_spec(name: str, settings: dict) -> IndexSpec:
    """A photo index of the offline model, made as Engine.create_photo_index makes one (no weights are loaded)."""
    embedder = OfflineEmbedder(Path("/nonexistent-pixsearch-cache"))
    vector_fields = [VectorField(name=s.name, dims=s.dims, model_id=s.model_id, metric=s.metric)
                     for s in embedder.spaces.values()]
    vector_fields.append(caption_vector_field(embedder, vector_fields))
    return IndexSpec(name=name, table_name=table_name_for(name), vector_fields=tuple(vector_fields),
                     fields=PHOTO_FIELDS + OFFLINE_PHOTO_FIELDS, kind="photos", model=embedder.name, settings=settings)


def _document_spec(name: str, vf: VectorField, settings: dict) -> IndexSpec:
    return IndexSpec(name=name, table_name=table_name_for(name), vector_fields=(vf,), fields=DOCUMENT_FIELDS,
                     settings=settings)


PHOTO_FILTER = And((Compare("taken_at", "ge", datetime(2020, 1, 1, tzinfo=timezone.utc)), AnyEq("tags", "eq", "dog")))
DOCUMENT_FILTER = And((Compare("category", "eq", 7), AnyEq("labels", "eq", "red")))
SHAPES = {
    "hnsw-photos": (
        "An HNSW photo index of the offline model (image, semantic and caption vectors), with regions.",
        lambda: _photo_spec("photos", {"regions": {"table": "px_photos_regions"}}), PHOTO_FILTER),
    "bit-rerank": (
        "Documents with a bit (binary-quantised) HNSW field whose candidates are re-ranked on the float vectors.",
        lambda: _document_spec("bits", VectorField("v", 256, metric="hamming", storage="bit",
                                                   params={"oversample": 4}), {}), DOCUMENT_FILTER),
    "ivfflat": (
        "Documents with an IVFFlat l2 field, built with 100 lists.",
        lambda: _document_spec("lists", VectorField("v", 128, metric="l2", algorithm="ivfflat"),
                               {"built": {"v": {"lists": 100}}}), DOCUMENT_FILTER),
    "distributed-photos": (
        "The HNSW photo index distributed on Citus (8 shards by its key), with regions colocated.",
        lambda: _photo_spec("photos", {"distribution": {"column": "id", "shards": 8},
                                       "regions": {"table": "px_photos_regions"}}), PHOTO_FILTER),
}


def rendered(shape: str) -> str:
    description, spec, example_filter = SHAPES[shape]
    return render(shape, description, statements(spec(), example_filter))


@pytest.mark.parametrize("shape", SHAPES)
def test_every_statement_matches_its_snapshot(shape):
    path = SNAPSHOTS / f"{shape}.sql"
    text = rendered(shape)
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"no snapshot {path}: run PIXSEARCH_UPDATE_SQL=1 pytest {Path(__file__).name}"
    stored = path.read_text()
    diff = "\n".join(difflib.unified_diff(stored.splitlines(), text.splitlines(), f"{path.name} (checked in)",
                                          f"{path.name} (what store/ issues now)", lineterm="", n=2))
    assert text == stored, (f"store/ issues different SQL than {path.name} shows; review the diff, then regenerate "
                            f"with PIXSEARCH_UPDATE_SQL=1:\n{diff[:6000]}")


def test_no_snapshot_without_a_shape():
    assert sorted(p.stem for p in SNAPSHOTS.glob("*.sql")) == sorted(SHAPES)


def test_statements_carry_placeholders_never_values():
    """The example filters' values (a date, 'dog', 7, 'red') stay bound parameters in every snapshot."""
    for shape in SHAPES:
        text = rendered(shape)
        assert "%(f0)s" in text and "%(f1)s" in text
        assert "'dog'" not in text and "'red'" not in text and "2020-01-01" not in text, shape


# -- the snapshots cover every statement: the parts write no SQL but through builders the catalogue renders ----------
STORE = Path(__file__).resolve().parents[1] / "src" / "pixsearch" / "store"
PARTS = ("definition", "knn", "queries", "writes", "stats", "regions", "session")


def _runs(tree: ast.AST) -> list[ast.Call]:
    """Calls that send a statement: .execute(...), .executemany(...), .copy(...)."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("execute", "executemany", "copy") and node.args]


def _inline_sql(arg: ast.expr) -> bool:
    """A statement written at the call (a string, or sql.SQL(...)) instead of taken from a builder."""
    if isinstance(arg, (ast.Constant, ast.JoinedStr)):
        return True
    return (isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr in ("SQL", "format")
            and not (isinstance(arg.func.value, ast.Call) and getattr(arg.func.value.func, "id", "").endswith("_sql")))


def test_the_parts_send_only_statements_their_builders_make():
    inline = []
    for name in PARTS:
        path = STORE / f"{name}.py"
        inline += [f"{path.name}:{call.lineno}" for call in _runs(ast.parse(path.read_text())) if _inline_sql(call.args[0])]
    assert not inline, f"statements written inline (make a builder and add it to sql_catalog.py): {inline}"


def test_every_builder_is_in_the_catalogue():
    catalogue = (STORE / "sql_catalog.py").read_text()
    missing = []
    for name in PARTS:
        tree = ast.parse((STORE / f"{name}.py").read_text())
        builders = [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.endswith("_sql")]
        builders += [target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
                     if isinstance(target, ast.Name) and target.id.endswith("_SQL")]
        missing += [f"{name}.{builder}" for builder in builders if not re.search(rf"\b{builder}\b", catalogue)]
    assert not missing, f"builders no snapshot renders (add them to sql_catalog.py): {missing}"
