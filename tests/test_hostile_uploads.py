"""Hostile upload file names: whatever name a client sends with an image (`..`, absolute paths, NUL bytes,
backslashes, nothing at all), the file lands in the index's own uploads folder and nowhere else.

A live API server on loopback (conftest's base_url/admin); the multipart bodies are written by hand, so every name
reaches the server byte for byte (an HTTP client would escape some of them).
"""
from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _png(seed: int) -> bytes:
    """A small PNG of random pixels: different bytes per seed, so each upload is a photo of its own."""
    pixels = np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    data = io.BytesIO()
    Image.fromarray(pixels).save(data, "PNG")
    return data.getvalue()


def _multipart(files: list[tuple[bytes, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with a `files` part per (raw filename, data), and its content type."""
    boundary = uuid.uuid4().hex.encode()
    body = b"".join(
        b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"files\"; filename=\"" + name
        + b"\"\r\nContent-Type: image/png\r\n\r\n" + data + b"\r\n" for name, data in files)
    return body + b"--" + boundary + b"--\r\n", f"multipart/form-data; boundary={boundary.decode()}"


@pytest.fixture(scope="module")
def uploads_index(api_engine, embedder):
    # The model's first use exports its towers (a minute or more): done here, not inside a request.
    embedder.embed_images([embedder.prepare_image(Image.new("RGB", (64, 48), (200, 30, 30)))])
    embedder.embed_texts(["warm up"])
    name = "hostile-uploads-" + uuid.uuid4().hex[:6]
    api_engine.create_photo_index(name)
    yield name
    api_engine.delete_index(name)


def test_hostile_upload_names_land_only_in_the_index_uploads_folder(admin, api_engine, uploads_index, tmp_path):
    home = api_engine.settings.home
    folder = (home / "uploads" / uploads_index).resolve()
    token = uuid.uuid4().hex[:8]  # in every name, so a file that escaped can be found by it
    outside = tmp_path / "outside"
    outside.mkdir()
    names = [
        f"../../escaped-{token}-up.png",
        "../" * 12 + f"tmp/escaped-{token}-deep.png",
        f"{home}/escaped-{token}-abs.png",
        f"{outside}/escaped-{token}-abs-outside.png",
        f"{folder}/../escaped-{token}-abs-sibling.png",
        f"../{uploads_index}-other/escaped-{token}-other-index.png",
        f"escaped-{token}-nul.png\x00/../../../escaped-{token}-after-nul.png",
        f"\x00escaped-{token}-leading-nul.png",
        f"..\\..\\escaped-{token}-backslash.png",
        f"./..//.//../escaped-{token}-dots.png",
        f"escaped-{token}-dir/",
        "..",
        "/",
        "",
    ]
    body, content_type = _multipart([(name.encode(), _png(i)) for i, name in enumerate(names)])
    try:
        response = admin.post(f"/indexes/{uploads_index}/images", content=body,
                              headers={"content-type": content_type}, timeout=600)
        assert response.status_code == 200, response.text
        results = response.json()["value"]
        # the server saw each name as sent (the empty one arrives as no name), and stored each image
        assert [r["filename"] or "" for r in results] == names
        assert all(r["status"] and r["statusCode"] == 201 for r in results), results

        stored = {}
        for name, result in zip(names, results):
            doc = admin.get(f"/indexes/{uploads_index}/docs/{result['key']}")
            assert doc.status_code == 200, doc.text
            path = Path(doc.json()["path"])
            assert path.parent == folder, (name, path)  # straight in the uploads folder: no sub-folder, no way out
            assert "\x00" not in path.name and "\\" not in path.name and not path.name.startswith("."), (name, path)
            assert Path(os.path.realpath(path)) == path and path.is_file(), (name, path)
            stored[path.name] = result["key"]
            thumb = admin.get(f"/thumbnails/{result['key']}", params={"index": uploads_index, "size": 128})
            assert thumb.status_code == 200, (name, thumb.text)
        assert len(stored) == len(names)  # one file per upload
        assert {p.name for p in folder.iterdir()} == set(stored)  # and nothing else in the folder

        # nothing with the token anywhere else: not in the home (database, caches, other indexes' uploads), the
        # test's folders, nor at the top of /tmp and of the home's parent, where the deep and absolute names point
        escaped = [str(p) for top in (Path("/tmp"), home.parent) for p in top.iterdir() if token in p.name]
        for top in (home, tmp_path):
            for root, dirs, found in os.walk(top):
                escaped += [os.path.join(root, f) for f in found + dirs if token in f and Path(root) != folder]
        assert not escaped, escaped
    finally:  # a file that did escape (a broken build) is not left in /tmp
        for top in (Path("/tmp"), home.parent):
            for path in top.glob(f"*{token}*"):
                if path.is_file():
                    path.unlink()
