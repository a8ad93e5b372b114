"""The Python API (`import pixsearch`): connect with settings precedence, indexes from embeddings or a model,
every query kind, embeddings in and out, FiftyOne's names, thread safety, and the README's examples, run."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pixsearch
from helpers import altered_copy, copy_some

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def client(home):
    with pixsearch.connect(home=home) as c:
        yield c


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_connect_precedence_keyword_environment_file_default(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("PIXSEARCH_INDEX", raising=False)
    assert pixsearch.connect(home=home).settings.index == "photos"  # default (nothing opened yet: no database)
    (home / "config.toml").write_text('index = "from-file"\nbatch_size = 4\n')
    assert pixsearch.connect(home=home).settings.index == "from-file"
    monkeypatch.setenv("PIXSEARCH_INDEX", "from-env")
    settings = pixsearch.connect(home=home).settings
    assert settings.index == "from-env" and settings.batch_size == 4
    assert pixsearch.connect(home=home, index="kw").settings.index == "kw"
    monkeypatch.setenv("PIXSEARCH_HOME", str(home))
    assert pixsearch.connect().settings.home == home


def test_an_index_of_precomputed_embeddings(client):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    ids = [f"s{i}" for i in range(300)]
    meta = [{"label": ["cat", "dog", "car"][i % 3], "n": i, "tags": ["even" if i % 2 == 0 else "odd"]}
            for i in range(300)]
    name = _name("emb")
    index = client.create_index(name, embeddings=x, ids=ids, metadata=meta)
    assert index.total_size == len(index) == 300 and "s7" in index and name in client.list_indexes()
    assert {f.name: f.type for f in index.spec.fields} == {"label": "string", "n": "int", "tags": "string[]"}

    by_vector = index.search(x[7], k=3)
    assert by_vector[0].id == "s7" and by_vector[0].score == pytest.approx(1.0, abs=1e-5)
    assert by_vector[0].fields["label"] == "dog" and by_vector[0].fields["n"] == 7
    assert index.search("s7", k=1)[0].id == "s7"  # a stored id
    mean = index.search(["s1", "s2"], k=5)
    expected = x[1] + x[2]  # the mean of the stored vectors (the same direction)
    assert mean.ids()[0] == index.search(expected, k=1)[0].id
    best = index.search(["s1", "s2"], k=2, aggregation="max")
    assert set(best.ids()) == {"s1", "s2"}
    assert set(index.search(x[7], k=50, filter="label eq 'cat'").ids()) <= {f"s{i}" for i in range(0, 300, 3)}
    assert index.search(x[7], k=10, within_ids=["s3", "s4", "s9"]).ids()[0] in {"s3", "s4", "s9"}
    assert len(index.search(x[7], k=10, filter="n lt 100", within_ids=["s3", "s200"])) == 1

    array, got = index.get_embeddings(["s5", "nope", "s2"])
    assert got == ["s5", "s2"] and np.array_equal(array, x[[5, 2]])
    everything, all_ids = index.get_embeddings()
    assert len(all_ids) == 300 and np.array_equal(everything[all_ids.index("s42")], x[42])
    index.add_embeddings(rng.normal(size=(2, 16)), ["n1", "n2"], [{"label": "new"}, {"label": "new"}])
    assert index.remove(["n1", "s0"]) == 2 and index.total_size == 300

    reverse = index.sort_by_similarity(x[7], k=3, reverse=True, dist_field="dist")
    assert reverse[0].id != "s7" and reverse[0].fields["dist"] == reverse[0].distance
    assert index.sort_by_similarity("s7", k=2)[0].id == "s7"

    renamed = client.rename_index(name, name + "-b")
    assert renamed.total_size == 300 and name not in client.list_indexes()
    renamed.cleanup()
    assert name + "-b" not in client.list_indexes()
    with pytest.raises(LookupError):
        client.index(name)


def test_a_photo_index_from_a_model(client, samples, tmp_path):
    folder = tmp_path / "photos"
    copy_some(samples, folder, ["cat-chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"])
    altered_copy(samples / "coffee.png", folder / "coffee-again.jpg")
    photos = client.create_index(_name("photos"), model="offline")
    ids = photos.add_images([folder])
    assert len(ids) == 5 and photos.total_size == 5
    assert photos.search("a cup of coffee", k=1)[0].fields["filename"].startswith("coffee")
    cat = str(folder / "cat-chelsea.png")
    assert photos.search(cat, k=1)[0].fields["path"] == cat  # an image file
    assert photos.search(Image.open(cat), k=1)[0].fields["path"] == cat  # a PIL image
    assert photos.search(Path(cat).read_bytes(), k=1)[0].fields["path"] == cat  # encoded bytes
    first = photos.search(cat, k=1)[0].id
    assert photos.search(first, k=1)[0].id == first  # a stored id
    [added] = photos.add_images([Image.new("RGB", (64, 48), (200, 30, 30))])
    assert added in photos
    coffees = set(photos.search(str(folder / "coffee.png"), k=2).ids())
    # the altered copy is cropped 10 % a side: more than an edit keeps of the frame, so it groups as a similar shot
    assert coffees in [set(group) for group in photos.duplicates(threshold=0.25, same_frame=False)]
    assert coffees not in [set(group) for group in photos.duplicates(threshold=0.25)]
    vectors, keys = photos.get_embeddings()
    assert vectors.shape == (6, 1280) and len(keys) == 6  # the image field
    frame = photos.search("a rocket", k=2).to_pandas()
    assert list(frame.columns[:3]) == ["id", "score", "distance"] and len(frame) == 2


def test_concurrent_searches_share_one_index(client):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    index = client.create_index(_name("threads"), embeddings=x, ids=[f"t{i}" for i in range(500)])
    errors, answers = [], []

    def work(start: int) -> None:
        try:
            for i in range(start, start + 20):
                answers.append(index.search(x[i], k=1)[0].id == f"t{i}")
        except Exception as exc:  # noqa: BLE001 - every failure counts
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t * 20,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(answers) == 160 and all(answers)


def test_from_fiftyone(client):
    rng = np.random.default_rng(2)
    sample_ids = [f"{i:024x}" for i in range(50)]  # FiftyOne's ObjectId strings
    embeddings = rng.normal(size=(50, 12))
    index = pixsearch.from_fiftyone(client, _name("fo"), sample_ids, embeddings)
    assert index.sort_by_similarity(sample_ids[3], k=1).ids() == [sample_ids[3]]


def _readme_python_blocks() -> list[str]:
    section = README.read_text().split("## Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_examples_run(home, tmp_path):
    blocks = _readme_python_blocks()
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        script = tmp_path / f"example{i}.py"
        script.write_text(block)
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                           env=dict(os.environ, PIXSEARCH_HOME=str(home)))
        assert r.returncode == 0, f"README example {i} failed:\n{block}\n{r.stderr[-3000:]}"


def test_py_typed_ships():
    assert (Path(pixsearch.__file__).parent / "py.typed").is_file()
