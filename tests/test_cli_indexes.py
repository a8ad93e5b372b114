"""Index management and the vector engine through the real `pixsearch` command."""
from __future__ import annotations

import json

import numpy as np

from conftest import run_cli


def test_precomputed_vectors_end_to_end(home, tmp_path, index_name):
    def cli(*args):
        result = run_cli(*args, home=home)
        assert result.returncode == 0, result.stderr
        return result

    created = json.loads(cli("indexes", "create", index_name, "--dims", "8", "--metric", "l2",
                             "--field", "category:int:filterable,facetable", "--json").stdout)
    assert created["vector_fields"][0] | {"params": None} == {
        "name": "vector", "dims": 8, "model_id": None, "metric": "l2", "storage": "vector", "algorithm": "hnsw",
        "params": None, "space": None}
    assert created["fields"][0]["filterable"] and created["fields"][0]["facetable"]

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 8)).astype(np.float32)
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "ids.txt").write_text("".join(f"id-{i}\n" for i in range(500)))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"category": i % 5}) + "\n" for i in range(500)))
    added = cli("vectors", "add", index_name, str(tmp_path / "v.npy"), "--ids", str(tmp_path / "ids.txt"),
                "--documents", str(tmp_path / "docs.jsonl"))
    assert "500 vectors upserted" in added.stderr

    np.save(tmp_path / "q.npy", vectors[42])
    hits = json.loads(cli("search", "--vector", str(tmp_path / "q.npy"), "--index", index_name, "--k", "3",
                          "--json").stdout)
    assert hits[0]["id"] == "id-42" and hits[0]["category"] == 2 and hits[0]["score"] == 1.0

    got = json.loads(cli("vectors", "get", index_name, "id-7", "missing").stdout)
    assert list(got) == ["id-7"] and np.allclose(got["id-7"]["vector"], vectors[7])
    assert "removed 1 of 2" in cli("vectors", "remove", index_name, "id-7", "missing").stderr

    stats = json.loads(cli("stats", "--index", index_name, "--json").stdout)
    assert stats["rows"] == 499 and stats["vector_fields"]["vector"]["ann_index_bytes"] > 0

    plan = cli("explain", "--vector", str(tmp_path / "q.npy"), "--index", index_name)
    assert "ANN index" in plan.stderr

    evaluation = json.loads(cli("evaluate", "--index", index_name, "--sample", "20", "--json").stdout)
    assert evaluation["queries"] == 20 and 0 <= evaluation["recall"] <= 1
    tuned = json.loads(cli("tune", "--index", index_name, "--target-recall", "0.9", "--sample", "20",
                           "--json").stdout)
    assert tuned["tuned"]["reached"] and tuned["tuned"]["recall"] >= 0.9

    cli("indexes", "rename", index_name, index_name + "-b")
    names = [spec["name"] for spec in json.loads(cli("indexes", "list", "--json").stdout)]
    assert index_name + "-b" in names and index_name not in names
    info = json.loads(cli("indexes", "info", index_name + "-b", "--json").stdout)
    assert info["settings"]["tuned"]["vector"]["recall"] >= 0.9 and info["stats"]["rows"] == 499
    cli("indexes", "delete", index_name + "-b", "--yes")
    assert index_name + "-b" not in [s["name"] for s in json.loads(cli("indexes", "list", "--json").stdout)]


def test_ivfflat_is_built_from_data_and_bad_definitions_are_explained(home, tmp_path, index_name):
    assert run_cli("indexes", "create", index_name, "--dims", "4", "--algorithm", "ivfflat", home=home).returncode == 0
    empty = run_cli("indexes", "rebuild", index_name, home=home)
    assert empty.returncode == 1 and "table is empty" in empty.stderr and "Traceback" not in empty.stderr
    np.save(tmp_path / "v.npy", np.random.default_rng(1).normal(size=(300, 4)).astype(np.float32))
    assert run_cli("vectors", "add", index_name, str(tmp_path / "v.npy"), home=home).returncode == 0
    built = run_cli("indexes", "rebuild", index_name, "--json", home=home)
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)[0]["lists"] == 10

    bad = run_cli("indexes", "create", index_name + "x", "--dims", "4", "--metric", "hamming", home=home)
    assert bad.returncode == 1 and "use storage 'bit'" in bad.stderr
    wrong = run_cli("vectors", "add", index_name, str(tmp_path / "missing.npy"), home=home)
    assert wrong.returncode == 1 and "cannot read" in wrong.stderr


def test_api_keys_are_created_listed_revoked_and_stored_hashed(home, engine):
    created = run_cli("keys", "create", "--role", "query", "--name", "web page", home=home)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("pxs_") and len(secret) > 40
    assert engine.api_key_role(secret) == "query" and engine.api_key_role(secret + "x") is None
    listed = json.loads(run_cli("keys", "list", "--json", home=home).stdout)
    (mine,) = [k for k in listed if k["name"] == "web page"]
    assert mine["role"] == "query" and secret not in json.dumps(listed)
    with engine.db.connection() as conn:
        stored = conn.execute("SELECT key_hash FROM pixsearch_api_keys WHERE id = %s", (mine["id"],)).fetchone()[0]
    assert stored != secret and len(stored) == 64
    assert run_cli("keys", "revoke", mine["id"], home=home).returncode == 0
    assert engine.api_key_role(secret) is None
    again = run_cli("keys", "revoke", mine["id"], home=home)
    assert again.returncode == 1 and "no active key" in again.stderr
    bad = run_cli("keys", "create", "--role", "root", home=home)
    assert bad.returncode == 1 and "unknown role" in bad.stderr
