"""Faces and people, against the real dlib models: detection recall/precision at IoU 0.5 and pairwise grouping
precision/recall on composed photos of three people (tests/face_photos.py), naming and the `people` filter, the
REST API (query keys read names and boxes, never descriptors), photos of a face, merge / remove-face / forget,
incremental runs (moved photos keep their faces, changed ones are scanned again), uploads, and the CLI."""
from __future__ import annotations

import io
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from face_photos import SOURCES, Face, FIXTURES, face_set, match, pairwise
from pixsearch.models.faces import DetectedFace
from pixsearch.search.request import SearchRequest
from pixsearch.service import FacesNotEnabled
from pixsearch.service.faces import AUTO, MIN_GROUP_SIDE, SMALL, THRESHOLD, face_state
from pixsearch.store.regions import FACE_FIELD

pytest.importorskip("dlib")

ORIGINALS = {s.name: s for s in SOURCES if s.name != "astronaut"}


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory) -> tuple[Path, dict[str, list[Face]]]:
    """The composed set plus the four source photos, and who is where in each (pixels of the upright photo)."""
    folder = tmp_path_factory.mktemp("faces")
    truth: dict[str, list[Face]] = {}
    for photo in face_set():
        photo.save(folder)
        truth[photo.name] = photo.faces
    for name, source in ORIGINALS.items():
        shutil.copy(FIXTURES / name, folder / name)
        truth[name] = [Face(source.person, source.box)]
    return folder, truth


@pytest.fixture(scope="module")
def library(api_engine, face_folder) -> str:
    folder, _ = face_folder
    name = "faces-" + uuid.uuid4().hex[:6]
    report = api_engine.index(name, create=True).add_paths([folder], faces=True)
    assert not report.failed and report.faces is not None and not report.faces["failed"], report.to_json()
    return name


def _keys_by_file(index) -> dict[str, str]:
    return {path.rsplit("/", 1)[-1]: key for key, path in index.store.rows_where_prefix("path", "/")}


def _matched_faces(index, truth) -> tuple[list[tuple[Face, dict]], int, int]:
    """(true face, stored face) pairs matched at IoU >= 0.5, the stored faces matching none, and the true faces
    found by none."""
    keys = _keys_by_file(index)
    pairs, extra, missed = [], 0, 0
    for name, faces in truth.items():
        stored = index.photo_faces(keys[name])
        matched = match(faces, [tuple(f["box"]) for f in stored])
        pairs += [(faces[t], stored[f]) for f, t in matched.items()]
        extra += len(stored) - len(matched)
        missed += len(faces) - len(matched)
    return pairs, extra, missed


def test_detection_recall_and_precision_at_iou_half(api_engine, library, face_folder):
    """Every face is found where it is (boxes in pixels of the upright original, EXIF orientation applied); what
    is found beyond the true faces is only what grouping leaves alone."""
    _, truth = face_folder
    index = api_engine.index(library)
    pairs, extra, missed = _matched_faces(index, truth)
    total = sum(len(f) for f in truth.values())
    recall = len(pairs) / total
    keys = _keys_by_file(index)
    stored = [f for name in truth for f in index.photo_faces(keys[name])]
    grouped_kind = [f for f in stored if f["state"] == AUTO]
    true_ids = {f["id"] for _, f in pairs}
    precision_all = len(pairs) / len(stored)
    precision_grouped = len([f for f in grouped_kind if f["id"] in true_ids]) / len(grouped_kind)
    print(f"detection (HOG): {len(pairs)}/{total} faces found (recall {recall:.3f}), {extra} other detections "
          f"(precision {precision_all:.3f}; of the faces grouping uses: {precision_grouped:.3f})")
    assert total >= 30
    assert recall >= 0.95
    assert precision_all >= 0.9
    assert precision_grouped == 1.0
    # the detections that are not faces are kept as unsure and in no person
    assert all(f["state"] == SMALL and f["person"] is None for f in stored if f["id"] not in true_ids)


def test_people_are_the_real_people(api_engine, library, face_folder):
    """Three people in the photos -> three people in the index, each holding one person's faces (pairwise
    precision and recall over every pair of found faces)."""
    _, truth = face_folder
    index = api_engine.index(library)
    pairs, _, _ = _matched_faces(index, truth)
    precision, recall = pairwise([t.person for t, _ in pairs], [s["person"] for _, s in pairs])
    print(f"grouping at threshold {THRESHOLD}: pairwise precision {precision:.3f}, recall {recall:.3f} over "
          f"{len(pairs)} faces")
    people = index.people()
    assert len(people) == 3
    assert precision == 1.0
    assert recall >= 0.95
    for person in people:
        assert len({t.person for t, s in pairs if s["person"] == person["id"]}) == 1


def test_descriptor_distances_leave_a_margin_around_the_threshold(api_engine, library, face_folder):
    """The threshold sits between the same person's faces and different people's, on this set."""
    _, truth = face_folder
    index = api_engine.index(library)
    pairs, _, _ = _matched_faces(index, truth)
    with index.store.faces.session() as session:
        vectors = np.stack([session.face(s["id"], descriptor=True)[FACE_FIELD] for _, s in pairs])
    labels = np.array([t.person for t, _ in pairs])
    distances = np.linalg.norm(vectors[:, None] - vectors[None], axis=-1)
    same = labels[:, None] == labels[None]
    upper = np.triu(np.ones_like(same), 1).astype(bool)
    within, between = distances[same & upper].max(), distances[~same & upper].min()
    print(f"descriptor L2: same person up to {within:.3f}, different people from {between:.3f}; threshold "
          f"{THRESHOLD}")
    assert within < THRESHOLD < between


def test_small_or_unsure_faces_are_kept_but_not_grouped():
    chip = np.zeros((150, 150, 3), np.uint8)
    assert face_state(DetectedFace((0, 0, 100, 100), 1.0, 100.0, chip), "hog") == AUTO
    assert face_state(DetectedFace((0, 0, 100, 100), 1.0, MIN_GROUP_SIDE - 1, chip), "hog") == SMALL
    assert face_state(DetectedFace((0, 0, 100, 100), 0.1, 100.0, chip), "hog") == SMALL


def _person_of(index, person_name: str, truth, library_pairs=None) -> int:
    pairs, _, _ = _matched_faces(index, truth)
    ids = {s["person"] for t, s in pairs if t.person == person_name}
    assert len(ids) == 1 and None not in ids
    return ids.pop()


def _photos_with(truth, *people: str) -> set[str]:
    return {name for name, faces in truth.items() if all(any(f.person == p for f in faces) for p in people)}


def _filtered(index, filter: str, text: str | None = None) -> list:
    return index.query(SearchRequest(text=text, filter=filter, top=100)).hits


def test_naming_a_person_makes_the_filter_return_exactly_their_photos(api_engine, library, face_folder):
    _, truth = face_folder
    index = api_engine.index(library)
    obama, biden = _person_of(index, "obama", truth), _person_of(index, "biden", truth)
    index.name_person(obama, "Barack Obama")
    index.name_person(biden, "Joe Biden")
    found = {hit.path.rsplit("/", 1)[-1] for hit in _filtered(index, "people/any(p: p eq 'Barack Obama')")}
    assert found == _photos_with(truth, "obama")
    both = "people/any(p: p eq 'Barack Obama') and people/any(p: p eq 'Joe Biden')"
    assert {hit.path.rsplit("/", 1)[-1] for hit in _filtered(index, both)} == _photos_with(truth, "obama", "biden")
    # with a text query: ranked by it, only their photos
    ranked = _filtered(index, "people/any(p: p eq 'Joe Biden')", text="a man in a suit")
    assert ranked and {hit.path.rsplit("/", 1)[-1] for hit in ranked} <= _photos_with(truth, "biden")
    # the unnamed person is in the field by id; the field is facetable
    collins = _person_of(index, "collins", truth)
    assert {hit.path.rsplit("/", 1)[-1] for hit in _filtered(index, f"people/any(p: p eq '{collins}')")} == \
        _photos_with(truth, "collins")
    facets = index.query(SearchRequest(facets=["people"], top=1)).facets["people"]
    counts = {f["value"]: f["count"] for f in facets}
    assert counts["Barack Obama"] == len(_photos_with(truth, "obama"))
    with pytest.raises(ValueError):
        index.name_person(obama, "12")  # digits stand for unnamed people


def test_rest_people_faces_and_no_descriptor_for_query_keys(api_engine, library, face_folder, query, admin):
    _, truth = face_folder
    index = api_engine.index(library)
    people = query.get(f"/indexes/{library}/people", params={"photos": "true"})
    assert people.status_code == 200, people.text
    listed = people.json()["value"]
    assert len(listed) == 3 and all(p["faces"] >= 3 and p["photos"] and p["sample_face_url"] for p in listed)
    thumb = query.get(listed[0]["sample_face_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(thumb.content)).size[0] <= 96
    key = _keys_by_file(index)["composed-03.jpg"]
    faces = query.get(f"/indexes/{library}/photos/{key}/faces").json()["value"]
    assert faces and all(set(f) == {"id", "photo", "box", "score", "person", "name", "state", "thumbnail_url"}
                         for f in faces)
    # nothing a query key can read carries a descriptor (a list of 128 numbers, anywhere in the answer)
    answers = [people, query.get(f"/indexes/{library}/photos/{key}/faces"), query.get(f"/indexes/{library}/docs/{key}"),
               query.get(f"/indexes/{library}/faces/{faces[0]['id']}/photos"),
               query.post(f"/indexes/{library}/docs/search", json={"search": "*", "top": 50})]
    assert all(a.status_code == 200 for a in answers)
    assert not any(_has_descriptor(a.json()) for a in answers)
    # query keys cannot change people; admin keys can
    person = listed[-1]["id"]
    assert query.patch(f"/indexes/{library}/people/{person}", json={"name": "X"}).status_code == 403
    assert query.delete(f"/indexes/{library}/people/{person}").status_code == 403
    assert query.post(f"/indexes/{library}/people/{person}/merge", json={"people": [1]}).status_code == 403
    renamed = admin.patch(f"/indexes/{library}/people/{person}", json={"name": "Eileen Collins"})
    assert renamed.status_code == 200, renamed.text
    assert query.get(f"/indexes/{library}/people/{person}").json()["name"] == "Eileen Collins"
    bad = admin.patch(f"/indexes/{library}/people/{person}", json={"name": "   "})
    assert bad.status_code == 400
    assert admin.patch(f"/indexes/{library}/people/999999", json={"name": "N"}).status_code == 404


def _has_descriptor(value) -> bool:
    if isinstance(value, dict):
        return any(_has_descriptor(v) for v in value.values())
    if isinstance(value, list):
        if len(value) == 128 and all(isinstance(v, (int, float)) for v in value):
            return True
        return any(_has_descriptor(v) for v in value)
    return False


def test_photos_with_this_face_by_id_and_by_upload(api_engine, library, face_folder, query):
    _, truth = face_folder
    index = api_engine.index(library)
    pairs, _, _ = _matched_faces(index, truth)
    face = next(s for t, s in pairs if t.person == "obama")
    hits = index.photos_with_face(face_id=face["id"], k=100)
    found = [h["path"].rsplit("/", 1)[-1] for h in hits]
    assert set(found) == _photos_with(truth, "obama")
    assert hits[0]["face"]["id"] == face["id"] and hits[0]["distance"] == 0.0  # the face itself first
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    data = (FIXTURES / "biden.jpg").read_bytes()
    answer = query.post(f"/indexes/{library}/faces/search", files={"image": ("q.jpg", data, "image/jpeg")},
                        params={"top": 100})
    assert answer.status_code == 200, answer.text
    assert {h["path"].rsplit("/", 1)[-1] for h in answer.json()["value"]} == _photos_with(truth, "biden")
    blank = Image.new("RGB", (300, 300), "gray")
    buffer = io.BytesIO()
    blank.save(buffer, "PNG")
    none = query.post(f"/indexes/{library}/faces/search", files={"image": ("b.png", buffer.getvalue(), "image/png")})
    assert none.status_code == 400 and "no face" in none.text


def _small_library(engine, tmp_path: Path) -> tuple[str, Path]:
    """Obama on three occasions and Biden three times (his photo, mirrored and turned), in their own index."""
    folder = tmp_path / "small"
    folder.mkdir()
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"):
        shutil.copy(FIXTURES / name, folder / name)
    biden = Image.open(FIXTURES / "biden.jpg")
    biden.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "biden-mirrored.jpg")
    biden.rotate(8, resample=Image.Resampling.BICUBIC).save(folder / "biden-turned.jpg")
    name = "faces-small-" + uuid.uuid4().hex[:6]
    report = engine.index(name, create=True).add_paths([folder], faces=True)
    assert report.faces["faces"] == 6 and report.faces["new_people"] == 2, report.to_json()
    return name, folder


def test_merge_remove_face_and_forget(engine, tmp_path):
    name, folder = _small_library(engine, tmp_path)
    index = engine.index(name)
    keys = _keys_by_file(index)
    assert sorted(p["faces"] for p in index.people()) == [3, 3]
    by_file = {f: index.photo_faces(keys[f])[0] for f in keys}
    obama, biden = by_file["obama.jpg"]["person"], by_file["biden.jpg"]["person"]
    index.name_person(biden, "Joe")
    # merge: Biden's faces become the (unnamed) Obama person's, which takes the name Joe
    merged = index.merge_people(obama, [biden])
    assert merged["faces"] == 6 and merged["name"] == "Joe"
    assert [p["id"] for p in index.people()] == [obama]
    assert len(_filtered(index, "people/any(p: p eq 'Joe')")) == 6
    # remove-face: the face leaves, stays out of grouping (even after a recluster), its photo loses the name
    removed = by_file["obama3.jpg"]["id"]
    index.remove_face(removed)
    index.recluster_people()
    assert index.photo_faces(keys["obama3.jpg"])[0]["person"] is None
    assert index.get([keys["obama3.jpg"]], vectors=False)[keys["obama3.jpg"]]["people"] is None
    assert index.person(obama)["faces"] == 5
    # forget: the person, their faces and descriptors go; their photos are not scanned again on the next run
    assert index.forget_person(obama) == 5
    assert index.people() == []
    assert _filtered(index, "people/any(p: p eq 'Joe')") == []
    with index.store.faces.session() as session:
        left = session.photo_faces(list(keys.values()))
    assert [f["id"] for f in left] == [removed]
    report = index.add_paths([folder])
    assert report.faces["photos"] == 0 and index.people() == []
    # forget everything: no face left anywhere, detection off
    assert index.forget_faces() == 1
    assert index.spec.settings.get("faces") is None
    with index.store.faces.session() as session:
        assert session.photo_faces(list(keys.values())) == []


def test_moved_photos_keep_their_faces_changed_ones_are_scanned_again(engine, tmp_path):
    name, folder = _small_library(engine, tmp_path)
    index = engine.index(name)
    before = _keys_by_file(index)
    person = index.photo_faces(before["obama2.jpg"])[0]["person"]
    (folder / "obama2.jpg").rename(folder / "obama-moved.jpg")
    report = index.add_paths([folder])
    assert report.moved == 1 and report.faces["photos"] == 0  # nothing scanned again
    after = _keys_by_file(index)
    moved = index.photo_faces(after["obama-moved.jpg"])
    assert len(moved) == 1 and moved[0]["person"] == person and moved[0]["id"].startswith(after["obama-moved.jpg"])
    # a changed photo: its old face goes, the new one is found and joins the person it looks like
    shutil.copy(FIXTURES / "biden.jpg", folder / "obama3.jpg")
    report = index.add_paths([folder])
    assert report.updated == 1 and report.faces["photos"] == 1
    biden = index.photo_faces(after["biden.jpg"])[0]["person"]
    assert [f["person"] for f in index.photo_faces(after["obama3.jpg"])] == [biden]
    # changed again, to a photo of no one: no face left, nobody in its people field
    Image.open(FIXTURES / "biden.jpg").crop((0, 400, 317, 720)).save(folder / "obama3.jpg")
    report = index.add_paths([folder])
    assert report.updated == 1 and report.faces["photos"] == 1 and report.faces["faces"] == 0
    assert index.photo_faces(after["obama3.jpg"]) == []
    assert index.get([after["obama3.jpg"]], vectors=False)[after["obama3.jpg"]]["people"] is None
    # a new photo joins its person incrementally; with --no-faces new photos are not scanned
    shutil.copy(FIXTURES / "obama.jpg", folder / "obama-again.jpg")
    report = index.add_paths([folder])
    assert report.faces["grouped"] == 1
    assert index.photo_faces(_keys_by_file(index)["obama-again.jpg"])[0]["person"] == person
    shutil.copy(FIXTURES / "obama3.jpg", folder / "obama-off.jpg")
    report = index.add_paths([folder], faces=False)
    assert report.faces is None
    assert index.get([_keys_by_file(index)["obama-off.jpg"]], vectors=False)[
        _keys_by_file(index)["obama-off.jpg"]]["face_count"] is None


def test_faces_are_off_unless_asked(engine, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    shutil.copy(FIXTURES / "obama.jpg", folder / "obama.jpg")
    name = "plain-" + uuid.uuid4().hex[:6]
    index = engine.index(name, create=True)
    report = index.add_paths([folder])
    assert report.faces is None
    assert index.get(report.keys, vectors=False)[report.keys[0]]["face_count"] is None
    assert not index.store.faces.exists()
    with pytest.raises(FacesNotEnabled):
        index.people()


def test_uploads_are_scanned_when_faces_are_on(api_engine, library, face_folder, admin):
    index = api_engine.index(library)
    obama = _person_of(index, "obama", face_folder[1])
    upload = Image.open(FIXTURES / "obama3.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    upload.save(buffer, "JPEG", quality=90)
    answer = admin.post(f"/indexes/{library}/images", files=[("files", ("up.jpg", buffer.getvalue(), "image/jpeg"))])
    assert answer.status_code == 200, answer.text
    key = answer.json()["value"][0]["key"]
    faces = index.photo_faces(key)
    assert [f["person"] for f in faces] == [obama]


def test_cli_index_faces_people_list_name_and_filter(home, api_engine, tmp_path):
    folder = tmp_path / "cli"
    folder.mkdir()
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"):
        shutil.copy(FIXTURES / name, folder / name)
    name = "faces-cli-" + uuid.uuid4().hex[:6]
    done = run_cli("index", str(folder), "--faces", "--index", name, "--json", home=home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["faces"]["faces"] == 4
    listed = run_cli("people", "list", "--json", "--index", name, home=home)
    assert listed.returncode == 0, listed.stderr
    people = json.loads(listed.stdout)
    assert len(people) == 1 and people[0]["faces"] == 3 and people[0]["name"] is None
    assert sorted(p["path"].rsplit("/", 1)[-1] for p in people[0]["photos"]) == ["obama.jpg", "obama2.jpg",
                                                                                 "obama3.jpg"]
    assert all(set(p) == {"id", "path"} for p in people[0]["photos"])
    named = run_cli("people", "name", str(people[0]["id"]), "Barack", "--index", name, home=home)
    assert named.returncode == 0, named.stderr
    found = run_cli("search", "a man", "--filter", "people/any(p: p eq 'Barack')", "--index", name, "--json",
                    home=home)
    assert found.returncode == 0, found.stderr
    assert sorted(h["path"].rsplit("/", 1)[-1] for h in json.loads(found.stdout)) == ["obama.jpg", "obama2.jpg",
                                                                                     "obama3.jpg"]
    missing = run_cli("people", "name", "99999", "X", "--index", name, home=home)
    assert missing.returncode == 1 and "no person 99999" in missing.stderr


def test_faces_wait_unknown_until_enough_look_alike(engine, tmp_path):
    """One photo of someone: an unknown face, no person. A second: still unknown. A third: the three form a
    person (MIN_FACES), the first two included."""
    folder = tmp_path / "waiting"
    folder.mkdir()
    name = "faces-wait-" + uuid.uuid4().hex[:6]
    index = engine.index(name, create=True)
    for i, photo in enumerate(("obama.jpg", "obama2.jpg", "obama3.jpg")):
        shutil.copy(FIXTURES / photo, folder / photo)
        report = index.add_paths([folder], faces=True)
        assert report.faces["faces"] == 1
        if i < 2:
            assert index.people() == [] and report.faces["grouped"] == 0
    assert report.faces["new_people"] == 1 and report.faces["grouped"] == 3
    [person] = index.people(with_photos=True)
    assert person["faces"] == 3 and sorted(p["path"].rsplit("/", 1)[-1] for p in person["photos"]) == [
        "obama.jpg", "obama2.jpg", "obama3.jpg"]
    assert len(_filtered(index, f"people/any(p: p eq '{person['id']}')")) == 3
