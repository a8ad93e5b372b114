"""Real photo libraries: captions, keywords and camera facts as fields (and captions as a ranked list), GPS filters,
moves and renames without re-embedding, sidecars that change, a watch mode, OCR text fused into search, HEIC and
animated files, near-duplicate groups (edited copies vs bursts), an index made by an earlier release, and the page's
"newest first" order. Every fixture is written here: JPEGs with XMP/IPTC/EXIF, sidecars, rendered text."""
from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, ImageOps

from conftest import run_cli
from helpers import iim, utf16z, with_iptc, xmp_packet
from pixsearch.config import Settings
from pixsearch.ingest.formats import register_extra_formats
from pixsearch.ingest.layout import layout_distance, layout_signature
from pixsearch.search.request import SearchRequest
from pixsearch.service import Engine
from pixsearch.store.schema import CAPTION_FIELD

LISBON = (38.7223, -9.1393)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _dms(value: float) -> tuple[float, float, float]:
    value = abs(value)
    degrees, minutes = int(value), int(value * 60) % 60
    return float(degrees), float(minutes), round((value * 3600) % 60, 4)


def _jpeg(source: Path, *, exif: Image.Exif | None = None, xmp: bytes | None = None, size=(480, 360)) -> bytes:
    image = Image.open(source).convert("RGB")
    image.thumbnail(size)
    buffer = io.BytesIO()
    options = {"quality": 90}
    if exif is not None:
        options["exif"] = exif.tobytes()
    if xmp is not None:
        options["xmp"] = xmp
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def library(samples, tmp_path_factory) -> Path:
    """Photos as cameras, phones and photo managers leave them."""
    folder = tmp_path_factory.mktemp("library")
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS R6"
    sub = exif.get_ifd(0x8769)
    sub[0x9003], sub[0x9011], sub[0xA434] = "2023:05:01 08:30:00", "+01:00", "RF24-105mm F4 L IS USM"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", _dms(LISBON[0]), "W", _dms(LISBON[1])
    xmp = xmp_packet(title="Morning espresso", description="A small cup on the balcony before work",
                     subjects=["breakfast"], hierarchical=["Places|Portugal|Lisbon"])
    (folder / "coffee.jpg").write_bytes(_jpeg(samples / "coffee.png", exif=exif, xmp=xmp))
    caption = iim((2, 120, "Launch day at the cape".encode()), (2, 25, b"space"), (2, 25, b"launch"))
    (folder / "rocket.jpg").write_bytes(with_iptc(_jpeg(samples / "rocket.jpg"), caption))
    windows = Image.Exif()
    windows[0x9C9E] = utf16z("NASA;portrait")
    (folder / "astronaut.jpg").write_bytes(_jpeg(samples / "astronaut.png", exif=windows))
    shutil.copy(samples / "cat-chelsea.png", folder / "cat.png")
    (folder / "cat.png.txt").write_text("Chelsea the tabby cat, asleep on the sofa")
    shutil.copy(samples / "motorcycle.png", folder / "motorcycle.png")
    return folder


@pytest.fixture(scope="module")
def library_index(api_engine, library) -> str:
    name = _name("library")
    report = api_engine.index(name, create=True).add_paths([library])
    assert report.added == 5 and not report.failed, report.to_json()
    return name


def _by_name(index, names=None) -> dict[str, dict]:
    hits = index.query(SearchRequest(top=100))
    return {h.document["filename"]: {"id": h.id, **h.document} for h in hits
            if names is None or h.document["filename"] in names}


def test_captions_keywords_and_camera_facts_become_fields(api_engine, library_index):
    index = api_engine.index(library_index)
    photos = _by_name(index)
    coffee = photos["coffee.jpg"]
    assert coffee["title"] == "Morning espresso" and coffee["description"].startswith("A small cup")
    assert coffee["keywords"] == ["breakfast", "Lisbon", "Portugal", "Places"]  # every level of Places|Portugal|Lisbon
    assert (coffee["camera_make"], coffee["camera_model"], coffee["lens"]) == (
        "Canon", "Canon EOS R6", "RF24-105mm F4 L IS USM")
    # the wall clock said 08:30 at UTC+01:00: the instant is 07:30 UTC, and where it came from is kept
    assert coffee["taken_at"] == datetime(2023, 5, 1, 7, 30, tzinfo=timezone.utc)
    assert coffee["taken_at_source"] == "exif"
    assert coffee["gps_lat"] == pytest.approx(LISBON[0], abs=1e-4)
    assert coffee["gps_lon"] == pytest.approx(LISBON[1], abs=1e-4)
    assert photos["rocket.jpg"]["description"] == "Launch day at the cape"
    assert photos["rocket.jpg"]["keywords"] == ["space", "launch"]
    assert photos["astronaut.jpg"]["keywords"] == ["NASA", "portrait"]
    assert photos["cat.png"]["description"] == "Chelsea the tabby cat, asleep on the sofa"
    assert photos["motorcycle.png"]["taken_at_source"] == "file" and photos["motorcycle.png"]["keywords"] is None

    lisbon = index.query(SearchRequest(filter="keywords/any(k: k eq 'Lisbon')", facets=["keywords", "camera_model"]))
    assert [h.document["filename"] for h in lisbon] == ["coffee.jpg"]
    assert {"value": "Canon EOS R6", "count": 1} in lisbon.facets["camera_model"]


def test_geo_distance_filters_in_azures_syntax(api_engine, library_index):
    index = api_engine.index(library_index)
    near = "geo.distance(gps, geography'POINT(-9.14 38.72)') le 10"  # longitude first, kilometres
    assert [h.document["filename"] for h in index.query(SearchRequest(filter=near))] == ["coffee.jpg"]
    assert not index.query(SearchRequest(filter="geo.distance(gps, geography'POINT(2.35 48.86)') lt 100")).hits
    far = index.query(SearchRequest(filter="geo.distance(gps, geography'POINT(2.35 48.86)') gt 1400"))
    assert [h.document["filename"] for h in far] == ["coffee.jpg"]  # Paris-Lisbon: 1,450 km; no GPS: no match
    with pytest.raises(ValueError, match="longitude first"):
        index.query(SearchRequest(filter="geo.distance(gps, geography'POINT(38.7 -200)') le 5"))


def test_captions_are_a_ranked_list_of_their_own(api_engine, library_index):
    index = api_engine.index(library_index)
    hits = index.query(SearchRequest(text="an espresso", top=5, mode="hybrid"))
    assert hits[0].document["filename"] == "coffee.jpg"
    assert {"vector", CAPTION_FIELD} <= set(hits[0].subscores)
    assert hits[0].subscores[CAPTION_FIELD]["rank"] == 1
    # only captions about the query count: "a motorcycle" matches no caption here, so no photo gets a caption rank
    assert all(CAPTION_FIELD not in h.subscores for h in index.query(SearchRequest(text="a motorcycle", top=5)))
    # the offline model's caption threshold, measured: related captions >= 0.3, unrelated ones below
    model = index.model()
    captions = model.embedder.embed_texts(["Morning espresso\nA small cup on the balcony before work",
                                           "Launch day at the cape\nspace, launch"])
    queries = model.embedder.embed_texts(["an espresso", "a rocket launch", "a motorcycle", "a cat"])
    similarity = queries @ captions.T
    threshold = model.embedder.caption_threshold
    assert similarity[0, 0] >= threshold and similarity[1, 1] >= threshold
    assert similarity[2].max() < threshold and similarity[3].max() < threshold and similarity[0, 1] < threshold


def test_a_changed_sidecar_rereads_captions_only(api_engine, library, tmp_path):
    folder = tmp_path / "sidecars"
    folder.mkdir()
    shutil.copy(library / "cat.png", folder / "cat.png")
    (folder / "cat.png.txt").write_text("A cat")
    index = api_engine.index(_name("sidecars"), create=True)
    index.add_paths([folder])
    key = _by_name(index)["cat.png"]["id"]
    before = index.get([key])[key]
    (folder / "cat.png.txt").write_text("A ginger cat on a red blanket")
    report = index.add_paths([folder])
    assert (report.metadata_updated, report.added, report.updated, report.unchanged) == (1, 0, 0, 0)
    after = index.get([key])[key]
    assert after["description"] == "A ginger cat on a red blanket"
    assert np.array_equal(after["image"], before["image"])  # the pixels were not embedded again
    assert not np.array_equal(after[CAPTION_FIELD], before[CAPTION_FIELD])
    (folder / "cat.png.txt").unlink()
    assert index.add_paths([folder]).metadata_updated == 1 and index.get([key])[key]["description"] is None
    assert index.add_paths([folder]).unchanged == 1


def test_moves_renames_and_copies_follow_their_files(api_engine, samples, tmp_path, home):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("coffee.png", "rocket.jpg", "astronaut.png", "coins.png"):
        shutil.copy(samples / name, folder / name)
    index = api_engine.index(_name("moves"), create=True)
    index.add_paths([folder])
    index.add_regions("grid-coarse")
    before = _by_name(index)
    vectors = index.get([p["id"] for p in before.values()])
    # The rows of the files about to move get image vectors no model makes: embedding them again would replace these.
    image_field = index.model().image_field
    marks = {name: _marker(vectors[before[name]["id"]][image_field], seed) for seed, name in
             enumerate(("coffee.png", "rocket.jpg"))}
    index.write_rows([{"id": before[name]["id"], image_field: mark} for name, mark in marks.items()],
                     columns=[image_field], insert_missing=False)
    (folder / "2023").mkdir()
    (folder / "coffee.png").rename(folder / "2023" / "espresso.png")  # moved and renamed
    (folder / "rocket.jpg").rename(folder / "launch.jpg")  # renamed
    shutil.copy(folder / "astronaut.png", folder / "2023" / "astronaut-copy.png")  # copied: a second photo
    (folder / "coins.png").unlink()
    out = run_cli("index", str(folder), "--index", index.name, "--json", home=home)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["moved"], report["added"], report["removed"], report["updated"]) == (2, 1, 1, 0)
    assert "2 moved" in out.stderr
    after = _by_name(index)
    assert set(after) == {"espresso.png", "launch.jpg", "astronaut.png", "astronaut-copy.png"}
    espresso = after["espresso.png"]
    assert espresso["folder"] == str(folder / "2023") and espresso["path"] == str(folder / "2023" / "espresso.png")
    followed = index.get([espresso["id"], after["launch.jpg"]["id"]])
    # not embedded again: the rows kept the vectors they had before the move (the markers)
    assert np.array_equal(followed[espresso["id"]][image_field], marks["coffee.png"])
    assert np.array_equal(followed[after["launch.jpg"]["id"]][image_field], marks["rocket.jpg"])
    assert index.query(SearchRequest(text="launch", mode="keyword"))[0].document["filename"] == "launch.jpg"
    regions = index.query(SearchRequest(ids=[espresso["id"]], regions="regions", top=50))
    assert {h.id.split(":")[0] for h in regions} >= {espresso["id"]}  # its regions came along
    copies = [after["astronaut.png"]["id"], after["astronaut-copy.png"]["id"]]
    assert sorted(copies) in [g.ids for g in index.duplicates()]  # same bytes in two places: a duplicate group

    # Another move, through an engine whose model counts the images it embeds: none. Then a new file, which is
    # embedded (with its regions, as the index is set up): the count sees what is embedded.
    counting = CountingEmbedder(index.model().embedder)
    (folder / "2023" / "espresso.png").rename(folder / "espresso.png")
    with Engine(Settings.load(home=home), embedder=counting) as engine:
        report = engine.index(index.name).add_paths([folder])
        assert (report.moved, report.added, report.updated, report.removed) == (1, 0, 0, 0)
        assert report.embedded_keys == [] and counting.images == 0
        back = _by_name(index)["espresso.png"]
        assert back["path"] == str(folder / "espresso.png")
        assert np.array_equal(index.get([back["id"]])[back["id"]][image_field], marks["coffee.png"])
        shutil.copy(samples / "coins.png", folder / "coins.png")
        report = engine.index(index.name).add_paths([folder])
        assert report.embedded_keys == [_by_name(index)["coins.png"]["id"]] and counting.images > 1


class CountingEmbedder:
    """A loaded model, used as is, that counts the images it is asked to embed."""

    def __init__(self, model):
        self.model = model
        self.images = 0

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def embed_images(self, images):
        self.images += len(images)
        return self.model.embed_images(images)


def _marker(like: np.ndarray, seed: int) -> np.ndarray:
    """A unit vector shaped like `like` that no photo's embedding is: random directions."""
    vector = np.random.default_rng(1000 + seed).normal(size=like.shape).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _wait_for(check, timeout: float = 60) -> None:
    """Wait until check() holds; the deadline only ends a wait for what is not coming (a busy machine is slow)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not seen within {timeout} s"
        time.sleep(0.05)


def test_watch_mode_applies_each_change_as_it_happens(api_engine, samples, tmp_path, home):
    folder = tmp_path / "watched"
    folder.mkdir()
    shutil.copy(samples / "coffee.png", folder / "coffee.png")
    name = _name("watch")
    exe = Path(sys.executable).with_name("pixsearch")
    proc = subprocess.Popen([str(exe), "index", str(folder), "--index", name, "--watch"], env=dict(
        os.environ, PIXSEARCH_HOME=str(home)), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        while "watching 1 folder" not in (line := proc.stderr.readline()):
            assert line, "the watcher exited before watching"
        index = api_engine.index(name)

        def names() -> set[str]:
            return set(_by_name(index))

        # Each change is applied once the folder has been quiet for a second (the watcher's debounce), in order.
        shutil.copy(samples / "rocket.jpg", folder / "rocket.jpg")
        _wait_for(lambda: "rocket.jpg" in names())
        assert names() == {"coffee.png", "rocket.jpg"}
        (folder / "rocket.jpg").rename(folder / "launch.jpg")
        _wait_for(lambda: names() == {"coffee.png", "launch.jpg"})
        (folder / "launch.jpg.txt").write_text("The launch, seen from the beach")
        _wait_for(lambda: _by_name(index)["launch.jpg"]["description"] is not None)
        assert _by_name(index)["launch.jpg"]["description"] == "The launch, seen from the beach"
        (folder / "coffee.png").unlink()
        _wait_for(lambda: names() == {"launch.jpg"})
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert "stopping" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _text_image(lines: list[str], size=(900, 420), background=(236, 230, 216)) -> Image.Image:
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    y = 40
    for text in lines:
        draw.text((40, y), text, fill=(20, 20, 28), font=ImageFont.load_default(56))
        y += 90
    return image


def test_text_in_photos_is_read_searchable_and_fused(api_engine, samples, tmp_path):
    pytest.importorskip("rapidocr")
    folder = tmp_path / "signs"
    folder.mkdir()
    _text_image(["HARBOUR LIGHTHOUSE", "Visitors 1887"]).save(folder / "sign.jpg", quality=92)
    _text_image(["Fresh bread daily", "Bakery open 7-19"]).save(folder / "shop.jpg", quality=92)
    for name in ("coffee.png", "rocket.jpg", "astronaut.png"):
        shutil.copy(samples / name, folder / name)
    index = api_engine.index(_name("ocr"), create=True)
    report = index.add_paths([folder], ocr=True)
    assert report.added == 5 and report.stage_seconds["ocr"] > 0
    sign = _by_name(index)["sign.jpg"]
    assert "lighthouse" in sign["ocr_text"].lower() and "1887" in sign["ocr_text"]
    boxes = json.loads(sign["ocr_boxes"])
    line = next(b for b in boxes if "LIGHTHOUSE" in b["text"].upper())
    x0, y0, x1, y1 = line["box"]
    assert 20 <= x0 < x1 <= 900 and 20 <= y0 < y1 <= 140  # where the first line was drawn
    hits = index.query(SearchRequest(text="lighthouse", top=5))
    assert hits[0].document["filename"] == "sign.jpg" and hits[0].subscores["ocr"]["rank"] == 1
    assert index.query(SearchRequest(text="bakery", mode="keyword"))[0].document["filename"] == "shop.jpg"
    assert index.spec.settings["ocr"] is True  # remembered: the next run reads text too


def test_heic_avif_and_animated_files_are_photos(api_engine, samples, tmp_path, admin):
    formats = register_extra_formats()
    if "HEIF" not in formats:
        pytest.skip("pillow-heif is not installed")
    folder = tmp_path / "phone"
    folder.mkdir()
    photo = Image.open(samples / "cat-chelsea.png").convert("RGB")
    photo.save(folder / "IMG_0042.HEIC", "HEIF", quality=85)
    frames = [Image.open(samples / name).convert("RGB").resize((200, 150)) for name in ("rocket.jpg", "coffee.png")]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=200, loop=0)
    if "AVIF" in formats:
        Image.open(samples / "coffee.png").convert("RGB").save(folder / "coffee.avif", "AVIF", quality=70)
    index = api_engine.index(_name("phone"), create=True)
    report = index.add_paths([folder])
    assert not report.failed and report.added == (3 if "AVIF" in formats else 2)
    photos = _by_name(index)
    assert photos["IMG_0042.HEIC"]["format"] == "HEIF" and photos["IMG_0042.HEIC"]["width"] == photo.width
    found = index.query(SearchRequest(image=samples / "cat-chelsea.png", top=1))
    assert found[0].document["filename"] == "IMG_0042.HEIC"
    gif = index.query(SearchRequest(image=samples / "rocket.jpg", top=2))  # the first frame stands for the file
    assert "anim.gif" in [h.document["filename"] for h in gif]
    # uploads keep HEIC as HEIC
    heic = (folder / "IMG_0042.HEIC").read_bytes()
    r = admin.post(f"/indexes/{index.name}/images", files=[("files", ("IMG_0042.HEIC", heic, "image/heic"))])
    assert r.status_code == 200, r.text
    assert r.json()["value"][0]["status"] and Path(_by_name(index)["IMG_0042.HEIC"]["path"]).suffix == ".HEIC"


def test_companions_of_one_shot_share_a_key(api_engine, samples, tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    for name in ("IMG_1234.JPG", "IMG_E1234.JPG", "IMG_1234_BURST0002.JPG", "IMG_9999.JPG"):
        Image.open(samples / "coffee.png").convert("RGB").save(folder / name, quality=80 + len(name) % 10)
    index = api_engine.index(_name("shots"), create=True)
    index.add_paths([folder])
    keys = {name: doc["companion_key"] for name, doc in _by_name(index).items()}
    assert keys["IMG_1234.JPG"] == keys["IMG_E1234.JPG"] == keys["IMG_1234_BURST0002.JPG"] != keys["IMG_9999.JPG"]


# -- near-duplicates ----------------------------------------------------------------------------------------------------
EDITS = {
    "resize": lambda img: (img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS), 85),
    "q40": lambda img: (img, 40),
    "crop": lambda img: (img.crop((int(img.width * .05), int(img.height * .05), int(img.width * .95),
                                   int(img.height * .95))), 85),
    "mirror": lambda img: (ImageOps.mirror(img), 85),
}
ORIGINALS = ("coffee.png", "rocket.jpg", "astronaut.png", "cat-chelsea.png", "motorcycle.png", "china-temple.jpg")


@pytest.fixture(scope="module")
def duplicates_index(api_engine, samples, tmp_path_factory) -> tuple[str, dict[str, str]]:
    folder = tmp_path_factory.mktemp("dups")
    family = {}
    for name in ORIGINALS:
        img = Image.open(samples / name).convert("RGB")
        stem = Path(name).stem
        img.save(folder / f"{stem}.jpg", quality=95)
        family[f"{stem}.jpg"] = stem
        for kind, edit in EDITS.items():
            copy, quality = edit(img)
            copy.save(folder / f"{stem}-{kind}.jpg", quality=quality)
            family[f"{stem}-{kind}.jpg"] = stem
    for i, (background, subject) in enumerate([("flower.jpg", "coffee.png"), ("brick-wall.png", "rocket.jpg")]):
        scene = Image.open(samples / background).convert("RGB")
        scene = scene.crop((0, 0, scene.width * 3 // 5, scene.height * 3 // 5)).resize((800, 600))
        thing = Image.open(samples / subject).convert("RGB").resize((240, 180))
        for j, spot in enumerate([(60, 60), (300, 220), (520, 380)]):  # the subject moves between frames
            frame = scene.copy()
            frame.paste(thing, spot)
            frame.save(folder / f"burst{i}-{j}.jpg", quality=90)
            family[f"burst{i}-{j}.jpg"] = f"burst{i}-{j}"
    name = _name("dups")
    api_engine.index(name, create=True).add_paths([folder])
    return name, family


def _pairs(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {pair for group in groups for pair in itertools.combinations(sorted(group), 2)}


def test_near_duplicates_group_edited_copies_not_bursts(api_engine, duplicates_index, home, admin, query):
    name, family = duplicates_index
    index = api_engine.index(name)
    groups = [[g.documents[i]["filename"] for i in g.ids] for g in index.duplicates()]
    grouped = _pairs(groups)
    wanted = {tuple(sorted((f"{Path(o).stem}.jpg", f"{Path(o).stem}-{kind}.jpg"))) for o in ORIGINALS for kind in EDITS}
    bursts = {pair for i in range(2) for pair in itertools.combinations([f"burst{i}-{j}.jpg" for j in range(3)], 2)}
    recall = len(grouped & wanted) / len(wanted)
    precision = sum(family[a] == family[b] for a, b in grouped) / len(grouped)
    assert recall >= 0.9 and precision == 1.0 and not grouped & bursts, (recall, precision, groups)
    similar = _pairs([[g.documents[i]["filename"] for i in g.ids] for g in index.duplicates(same_frame=False)])
    assert similar & bursts  # without the layout check, the frames of a burst group too

    out = run_cli("duplicates", "--index", name, "--json", home=home)
    assert out.returncode == 0, out.stderr
    assert _pairs([[item["filename"] for item in g["items"]] for g in json.loads(out.stdout)]) == grouped
    r = admin.get(f"/indexes/{name}/duplicates", params={"top": 2})
    assert r.status_code == 200 and len(r.json()["value"]) == 2
    assert query.get(f"/indexes/{name}/duplicates").status_code == 403  # every photo's neighbours: admin only


def test_layouts_tell_an_edited_copy_from_another_frame(samples):
    photo = Image.open(samples / "astronaut.png").convert("RGB")
    copy = ImageOps.mirror(photo.crop((20, 10, photo.width - 5, photo.height - 25))).resize((300, 300))
    moved = photo.copy()
    moved.paste(photo.crop((0, 0, 160, 160)), (300, 300))
    assert layout_distance(layout_signature(photo), layout_signature(copy)) < 0.03
    assert layout_distance(layout_signature(photo), layout_signature(moved)) > 0.03


# -- an index made before these fields existed -------------------------------------------------------------------------
def test_an_index_from_an_earlier_release_gets_the_new_fields(api_engine, library, tmp_path):
    from pixsearch.store import change_definition
    from pixsearch.store.schema import PHOTO_FIELDS

    index = api_engine.index(_name("old"), create=True)
    spec = index.spec
    newer = {f.name for f in PHOTO_FIELDS} - {"path", "folder", "filename", "content_hash", "size_bytes", "mtime_ns",
                                              "format", "width", "height", "taken_at", "camera", "gps_lat", "gps_lon"}
    change_definition(api_engine.db, index.name,  # what the first release made: no caption field, no new columns
                      vector_fields=tuple(vf for vf in spec.vector_fields if vf.name != CAPTION_FIELD),
                      fields=tuple(f for f in spec.fields if f.name not in newer), model=spec.model,
                      drop=(CAPTION_FIELD, *sorted(newer)))
    old = api_engine.index(index.name)
    assert CAPTION_FIELD not in {vf.name for vf in old.spec.vector_fields}
    report = old.add_paths([library])
    assert report.added == 5
    upgraded = api_engine.index(index.name)
    assert CAPTION_FIELD in {vf.name for vf in upgraded.spec.vector_fields} and newer <= {
        f.name for f in upgraded.spec.fields}
    assert upgraded.query(SearchRequest(text="an espresso", top=1))[0].document["filename"] == "coffee.jpg"


# -- the page ------------------------------------------------------------------------------------------------------------
def test_the_page_sorts_relevant_photos_by_date_and_marks_text(api_engine, samples, tmp_path):
    pytest.importorskip("rapidocr")
    from helpers import chromium_browser
    from pixsearch.api import create_app
    from pixsearch.api.server import serving_in_thread

    folder = tmp_path / "dated"
    folder.mkdir()
    _text_image(["HARBOUR LIGHTHOUSE"]).save(folder / "sign.jpg", quality=92)
    days = {"coffee.png": 3, "rocket.jpg": 1, "astronaut.png": 2, "motorcycle.png": 4}
    for name, day in days.items():
        shutil.copy(samples / name, folder / name)
        stamp = datetime(2021, 6, day, tzinfo=timezone.utc).timestamp()
        os.utime(folder / name, (stamp, stamp))
    index = api_engine.index(_name("dated"), create=True)
    index.add_paths([folder], ocr=True)
    with serving_in_thread(create_app(api_engine, query_keys=["sort-page"], page_index=index.name)) as url, \
            chromium_browser() as browser:
        page = browser.new_page()
        page.goto(f"{url}/?q=lighthouse#key=sort-page")
        page.wait_for_selector("#results li .text-box", timeout=30_000)  # the words found in the photo, marked
        assert page.locator("#results li").first.get_attribute("data-path").endswith("sign.jpg")
        page.goto(f"{url}/#key=sort-page")
        page.wait_for_selector("#results li", timeout=30_000)
        page.select_option("#sort", "taken_at asc")
        first = page.locator("#results li").first
        _wait_for(lambda: (first.get_attribute("data-path") or "").endswith("rocket.jpg"), 30)
        order = [Path(p).name for p in page.locator("#results li").evaluate_all("els => els.map(e => e.dataset.path)")]
        assert order[:4] == ["rocket.jpg", "astronaut.png", "coffee.png", "motorcycle.png"]
