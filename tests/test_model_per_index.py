"""Real CLIP-class models through the whole product: a tiny random transformers CLIP checkpoint indexes photos,
answers text, image and id searches; an index built by one model is searched with it while another index uses
another; reindex moves an index to a new model while searches go on, and survives a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from helpers import copy_some, noise_images
from pixsearch.config import Settings
from pixsearch.search.request import SearchRequest
from pixsearch.search.expressions import parse_query
from pixsearch.service import Engine, ModelMismatchError, Query
from tiny_models import build_tiny_clip

PHOTOS = ["cat-chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "moon.png", "brick-wall.png"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("ckpt") / "tiny-clip", image_size=32)


@pytest.fixture(scope="module")
def photo_folder(samples, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip-photos")
    copy_some(samples, folder, PHOTOS)
    return folder


@pytest.fixture(scope="module")
def clip_index(home, photo_folder, tiny_clip) -> str:
    name = "clip-" + uuid.uuid4().hex[:6]
    r = run_cli("index", str(photo_folder), "--index", name, "--model", tiny_clip.name, "--json", home=home)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["added"] == len(PHOTOS)
    return name


def _reference(tiny_clip):
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(tiny_clip.path)).eval()
    return model, CLIPImageProcessor.from_pretrained(str(tiny_clip.path)), CLIPTokenizer.from_pretrained(
        str(tiny_clip.path)), torch


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return x / np.linalg.norm(x)


def _features(output) -> np.ndarray:
    return (output.pooler_output if hasattr(output, "pooler_output") else output).numpy()


def _assert_unit_and_close(got, reference, cosine: float = 0.999) -> None:
    """A vector as stored, queried or embedded, not re-normalised: of unit length, and within the distance of the
    reference model's normalised vector that `cosine` allows between unit vectors (|a - b|^2 = 2 - 2 cos)."""
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    assert abs(np.linalg.norm(got) - 1) <= 1e-5, np.linalg.norm(got)
    assert np.linalg.norm(got - _unit(reference)) <= np.sqrt(2 * (1 - cosine)) + 1e-6


def test_stored_and_query_vectors_equal_the_reference_model(home, clip_index, tiny_clip, photo_folder):
    model, processor, tokenizer, torch = _reference(tiny_clip)
    with Engine(Settings.load(home=home)) as engine:
        idx = engine.index(clip_index)
        assert idx.spec.model == tiny_clip.name and [vf.name for vf in idx.spec.vector_fields] == ["clip", "caption"]
        assert {f.name for f in idx.spec.fields}.isdisjoint({"class_ids", "class_probs", "tags"})
        stored = {h.document["filename"]: h.id for h in idx.query(SearchRequest(top=50))}
        for name in ("cat-chelsea.png", "coffee.png"):
            vector = idx.get([stored[name]])[stored[name]]["clip"]
            pixels = processor(images=Image.open(photo_folder / name).convert("RGB"), return_tensors="pt")
            with torch.no_grad():
                expected = model.get_image_features(**pixels)
            assert float(_unit(vector) @ _unit(expected.pooler_output if hasattr(expected, "pooler_output")
                                                  else expected)) >= 0.999
            _assert_unit_and_close(vector, _features(expected))
        every_image_vector, keys = idx.all_vectors("clip")
        assert len(keys) == len(PHOTOS)
        np.testing.assert_allclose(np.linalg.norm(every_image_vector, axis=1), 1, atol=1e-5)
        field, query = idx.resolve(parse_query("a red cat"))
        tokens = tokenizer(["a red cat"], return_tensors="pt", padding=True)
        with torch.no_grad():
            expected = model.get_text_features(**tokens)
        expected = expected.pooler_output if hasattr(expected, "pooler_output") else expected
        assert field == "clip" and float(_unit(query) @ _unit(expected)) >= 0.999
        _assert_unit_and_close(query, _features(expected))
        _assert_unit_and_close(engine.model(tiny_clip.name).embed_texts(["a red cat"])[0], _features(expected))


def test_text_image_and_id_searches_from_the_cli(home, clip_index, photo_folder):
    r = run_cli("search", "a cat", "--index", clip_index, "--json", "-k", "3", home=home)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 3
    r = run_cli("search", "--image", str(photo_folder / "coffee.png"), "--index", clip_index, "--json", "-k", "1",
                home=home)
    hit = json.loads(r.stdout)[0]
    assert hit["path"].endswith("coffee.png") and hit["score"] == pytest.approx(1.0, abs=1e-3)
    r = run_cli("search", f"id:{hit['id']}", "--index", clip_index, "--json", "-k", "1", home=home)
    assert json.loads(r.stdout)[0]["id"] == hit["id"]


def test_each_index_is_searched_with_its_own_model(home, embedder, clip_index, sample_index, samples, tiny_clip):
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        clip_hits = engine.index(clip_index).search(Query(image=samples / "moon.png"), k=1)
        offline_hits = engine.index(sample_index).search("a cup of coffee", k=1)
        assert clip_hits[0].path.endswith("moon.png")
        assert offline_hits[0].path.endswith("coffee.png")
        assert {tiny_clip.name} <= set(engine._models)  # loaded on demand; the offline one was given
        with pytest.raises(ValueError, match="uses model"):
            engine.index(clip_index, create=True, model="offline")


def test_mixing_models_in_a_field_is_refused(home, embedder, clip_index, sample_index):
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        idx = engine.index(clip_index)
        with pytest.raises(ValueError, match="dimensions"):
            idx.search_vector(np.ones(384, np.float32), 3, field="clip")
        with pytest.raises(ValueError, match=r"shape \(1, 16\)"):
            idx.add_vectors(["x"], {"clip": np.ones((1, 384), np.float32)})
        spec = engine.index(sample_index).spec
        from pixsearch.store import change_definition

        wrong = tuple(vf if vf.name != "semantic" else type(vf)(**{**vf.to_json(), "model_id": "someone-else"})
                      for vf in spec.vector_fields)
        name = "mixed-" + uuid.uuid4().hex[:6]
        engine.create_photo_index(name)
        target = engine.index(name).spec
        change_definition(engine.db, name, vector_fields=wrong, fields=target.fields, model="offline")
        with pytest.raises(ModelMismatchError, match="cannot be mixed"):
            engine.index(name).search("a cat")


def test_reindex_while_searching_then_switch(home, embedder, samples, tiny_clip, tmp_path):
    folder = tmp_path / "library"
    copy_some(samples, folder, PHOTOS)
    name = "move-" + uuid.uuid4().hex[:6]
    with Engine(Settings.load(home=home, batch_size=2), embedder=embedder) as engine:
        engine.index(name, create=True).add_paths([folder])
        results: list[str] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def keep_searching() -> None:
            while not stop.is_set():
                try:
                    idx = engine.index(name)  # a fresh definition each time, as each API request gets
                    idx.search("a photo of a cat", k=3)
                    results.append(idx.spec.model)
                except BaseException as exc:  # noqa: BLE001 - every failure counts
                    errors.append(exc)

        searcher = threading.Thread(target=keep_searching)
        searcher.start()
        try:
            report = engine.index(name).reindex(tiny_clip.name)
            time.sleep(0.3)
        finally:
            stop.set()
            searcher.join()
        assert not errors, errors[:3]
        assert report.switched and report.embedded == len(PHOTOS) and not report.failed
        assert "offline" in results and results[-1] == tiny_clip.name  # the switch happened under load
        idx = engine.index(name)
        assert idx.model().text_field == "clip" and idx.search(f"image:{folder / 'rocket.jpg'}", k=1)[0].path.endswith(
            "rocket.jpg")
        assert idx.spec.settings["previous_models"] == {"image": "offline", "semantic": "offline"}
        assert {"image", "semantic", "clip"} <= {vf.name for vf in idx.spec.vector_fields}  # old ones kept
        stored = idx.get([idx.search("x", k=1)[0].id])
        assert next(iter(stored.values()))["semantic"] is not None
        # back to the offline model: its kept fields are reused, then the CLIP ones dropped
        back = idx.reindex("offline", drop_old=True)
        assert back.switched and back.embedded == 0 and back.dropped == ["clip"]
        assert engine.index(name).search("a cup of coffee", k=1)[0].path.endswith("coffee.png")


def test_reindex_dropping_the_old_model_drops_the_photo_fields_it_declared(home, embedder, samples, tiny_clip,
                                                                            tmp_path):
    folder = tmp_path / "declared"
    copy_some(samples, folder, PHOTOS[:2])
    name = "declared-" + uuid.uuid4().hex[:6]
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        engine.index(name, create=True).add_paths([folder])
        report = engine.index(name).reindex(tiny_clip.name, drop_old=True)
        assert report.switched and report.dropped == ["class_ids", "class_probs", "image", "semantic", "tags"]
        spec = engine.index(name).spec
        assert {f.name for f in spec.fields}.isdisjoint({"class_ids", "class_probs", "tags"})
        assert sorted(vf.name for vf in spec.vector_fields) == ["caption", "clip"]


def test_a_killed_reindex_resumes_and_finishes(home, samples, tiny_clip, tmp_path):
    folder = tmp_path / "many"
    noise_images(folder, 120, 96, 128, seed=5)
    name = "killed-" + uuid.uuid4().hex[:6]
    assert run_cli("index", str(folder), "--index", name, home=home).returncode == 0
    env = dict(os.environ, PIXSEARCH_HOME=str(home), PIXSEARCH_BATCH_SIZE="2", PIXSEARCH_DECODE_WORKERS="1")
    exe = Path(sys.executable).with_name("pixsearch")
    proc = subprocess.Popen([str(exe), "reindex", name, "--model", tiny_clip.name], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with Engine(Settings.load(home=home)) as engine:
        deadline = time.monotonic() + 120
        filled = 0
        while time.monotonic() < deadline and proc.poll() is None:
            spec = engine.index(name).spec
            if "clip" in {vf.name for vf in spec.vector_fields}:
                with engine.db.connection() as conn:
                    filled = conn.execute(f"SELECT count(clip) FROM {spec.table_name}").fetchone()[0]
                if filled >= 10:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        idx = engine.index(name)
        assert idx.spec.model == "offline" and idx.spec.settings.get("reindex")  # not switched, plan kept
        assert 10 <= filled < 120
        assert idx.search("a photo", k=3)  # still searchable with the old model
    r = run_cli("reindex", name, "--model", tiny_clip.name, "--json", home=home)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["resumed"] and report["switched"] and report["embedded"] <= 120 - 10
    with Engine(Settings.load(home=home)) as engine:
        idx = engine.index(name)
        with engine.db.connection() as conn:
            counts = conn.execute(f"SELECT count(*), count(clip) FROM {idx.spec.table_name}").fetchone()
        assert counts == (120, 120) and idx.spec.model == tiny_clip.name


def test_models_list_and_check(home, tiny_clip, clip_index):
    r = run_cli("models", "list", "--json", home=home)
    assert r.returncode == 0, r.stderr
    listed = {m["name"]: m for m in json.loads(r.stdout)}
    assert listed["offline"]["available"] and listed["offline"]["dims"] == {"image": 1280, "semantic": 384}
    assert listed[tiny_clip.name]["dims"] == {"clip": 16} and listed[tiny_clip.name]["size_bytes"] > 0
    assert listed[tiny_clip.name]["location"] == str(tiny_clip.path.resolve())
    assert listed[tiny_clip.name]["model_id"].startswith("clip:tiny-clip@")
    r = run_cli("models", "check", tiny_clip.name, "--json", home=home)
    assert r.returncode == 0, r.stderr
    checked = json.loads(r.stdout)
    assert checked["dims"] == {"clip": 16} and checked["image_seconds"] > 0 and checked["text_seconds"] > 0
    r = run_cli("models", "check", "clip:/nowhere/model", home=home)
    assert r.returncode == 1 and "/nowhere/model" in r.stderr


def test_the_page_asks_a_clip_index_only_for_what_it_has(clip_index, sample_index, query):
    caps = query.get(f"/indexes/{clip_index}/capabilities").json()
    names = {f["name"] for f in caps["fields"]}
    assert caps["textSearch"] and caps["model"].startswith("clip:") and "tags" not in names and "taken_at" in names
    assert caps["relevance"] is None  # a CLIP checkpoint carries no calibration
    r = query.post(f"/indexes/{clip_index}/docs/search", json={
        "search": "a cat", "select": "id,path,filename,folder,taken_at", "facets": ["taken_at,interval:year"],
        "count": True})
    assert r.status_code == 200 and len(r.json()["value"]) == len(PHOTOS), r.text
    offline = query.get(f"/indexes/{sample_index}/capabilities").json()
    assert offline["relevance"]["threshold"] == pytest.approx(0.05)


def test_an_unfinished_reindex_can_be_undone(home, embedder, samples, tiny_clip, tmp_path):
    from pixsearch.service.reindex import _plan

    folder = tmp_path / "undo"
    copy_some(samples, folder, PHOTOS[:2])
    name = "undo-" + uuid.uuid4().hex[:6]
    with Engine(Settings.load(home=home), embedder=embedder) as engine:
        idx = engine.index(name, create=True)
        idx.add_paths([folder])
        before = idx.spec.vector_fields
        _plan(idx, engine.model(tiny_clip.name))  # as a killed run leaves it: columns added, nothing switched
        with pytest.raises(ValueError, match="being moved"):
            engine.index(name).reindex("offline")
        assert engine.index(name).abort_reindex() == ["clip"]
        idx = engine.index(name)
        assert idx.spec.vector_fields == before and "reindex" not in idx.spec.settings
        with engine.db.connection() as conn:
            columns = {r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (idx.spec.table_name,))}
        assert "clip" not in columns and idx.search("a cat", k=1)


def test_a_text_search_in_a_fresh_process_never_imports_torch(home, clip_index):
    script = ("import sys\nfrom pixsearch.cli.main import app\n"
              f"try:\n    app(['search', 'a cat', '--index', {clip_index!r}, '--json'])\nexcept SystemExit:\n    pass\n"
              "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PIXSEARCH_HOME=str(home)))
    assert json.loads(r.stdout) and "NO-TORCH" in r.stderr, r.stderr[-2000:]
