"""Faces and people: find the faces in a photo index's photos, group them into people, name, merge and forget
people, and find the photos of a face.

Detection (`pixsearch index --faces`, remembered per index): every photo not scanned yet (its `face_count` is NULL:
new, changed — ingest rewrites a changed photo's row whole — or indexed before faces were turned on) is read again
through the index's roots and the one image stage; models/faces.py finds its faces and describes them. A moved photo
keeps its row, so it keeps its faces. Faces too small or too unsure to describe someone reliably (FaceQuality) are
kept and shown but never grouped.

Grouping (immich's approach, incremental): a face that is not in a person yet joins the person of its nearest face
within `threshold` (L2 between dlib descriptors); if no face within the threshold has a person but at least
`min_faces - 1` ungrouped ones are, they form a new person together; otherwise it waits, ungrouped ("unknown"), and is
looked at again when a face placed later lands within its reach. `recluster` dissolves the unnamed people and groups again; named people (the
user's work) stay and attract their faces.

THRESHOLD: measured on the face_recognition package's photos (Obama on three occasions, Biden) and skimage's
astronaut (Eileen Collins), composed into multi-face photos at several sizes, turns, brightnesses and EXIF
orientations (tests/face_photos.py; bench/faces.py sweeps it): the same person's faces lie within 0.48 of each
other, different people's 0.78 or more apart. Grouping is perfect on that set (pairwise precision and recall 1.0)
from 0.35 to 0.8; plain pairs "distance <= t" reach recall 1.0 at 0.5 and lose precision at 0.8. 0.5 is used: the
smallest threshold at which every same-person pair of the set is within reach, dlib's own clustering example's
value, and under dlib's pair-matching 0.6 on the side of not merging two people (joining is transitive, and a
merge by hand is one command, where undoing a wrong merge is a face at a time).
"""
from __future__ import annotations

import base64
import io
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from pixsearch.ingest.decode import DecodedImage, decode_bytes
from pixsearch.ingest.stage import ImageStage, StageOptions
from pixsearch.models.base import ImageEmbeddings
from pixsearch.models.faces import (
    DEFAULT_DETECTOR,
    DETECT_SIDE,
    DETECTORS,
    DetectedFace,
    FaceModel,
    face_thumbnail,
    shared_face_model,
)
from pixsearch.service.captions import upgrade_photo_index
from pixsearch.service.core import IndexCore
from pixsearch.service.roots import read_stored_photo
from pixsearch.store import SchemaError
from pixsearch.store.results import Hit
from pixsearch.store.faces import AUTO, FACE_COUNT_FIELD, REMOVED, SMALL, FaceSession
from pixsearch.store.regions import FACE_FIELD, FACE_SOURCE, PHOTO_KEY, region_spec

THRESHOLD = 0.5  # see the module docstring
MIN_FACES = 3  # faces that form a new person (immich's default)
NEIGHBOURS = 16  # faces looked at around each face when grouping
SCAN_BATCH = 32  # photos per lookup and per write
MAX_NAME_CHARS = 100
# Faces smaller than this (its side, in pixels of the image it was found in) or scored lower are not grouped: a
# 40-pixel face upscaled to the 150-pixel crop the descriptor network reads gives a descriptor that wanders.
MIN_GROUP_SIDE = 40
MIN_GROUP_SCORE = {"hog": 0.3, "cnn": 0.5}  # HOG's SVM margin; MMOD's score (false positives measured below these)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FacesNotEnabled(SchemaError):
    """The index has no faces: they were never turned on (pixsearch index PATH --faces)."""


class PersonNotFound(LookupError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class FaceNotFound(LookupError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class FaceReport:
    photos: int = 0  # photos scanned
    faces: int = 0  # faces found in them
    grouped: int = 0  # faces that joined a person in this run
    new_people: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"photos": self.photos, "faces": self.faces, "grouped": self.grouped, "new_people": self.new_people,
                "failed": [{"path": p, "reason": r} for p, r in self.failed]}


# -- settings -------------------------------------------------------------------------------------------------------
def face_settings(index: IndexCore) -> dict[str, Any]:
    """Detection settings when faces are on for the index ({} when off)."""
    return dict(index.spec.settings.get("faces") or {})


def has_faces(index: IndexCore) -> bool:
    """Whether the index has face columns (faces were turned on at some point; they may be off now)."""
    return bool((index.spec.settings.get("regions") or {}).get("faces"))


def set_faces(index: IndexCore, enabled: bool, *, detector: str | None = None) -> None:
    """Turn face detection on (loading the model first, so a missing install fails now) or off for the index's
    later runs. Turning it off keeps the faces and people found so far (forget_all removes them)."""
    if index.spec.kind != "photos":
        raise SchemaError(f"index {index.name!r} is not a photo index: faces are found in photos")
    if not enabled:
        if index.spec.settings.get("faces"):
            index.update_settings({"faces": None})
        return
    chosen = detector or face_settings(index).get("detector") or DEFAULT_DETECTOR
    if chosen not in DETECTORS:
        raise ValueError(f"unknown face detector {chosen!r}; known: {', '.join(DETECTORS)}")
    shared_face_model(chosen).load()
    if not has_faces(index) or face_settings(index).get("detector") != chosen:
        changes: dict[str, Any] = {"faces": {**face_settings(index), "detector": chosen}}
        if not has_faces(index):
            changes["regions"] = {"table": region_spec(index.spec).table_name, "faces": True}
        index.update_settings(changes)
    index.store.faces.ensure()


def _grouping(index: IndexCore) -> tuple[float, int]:
    settings = face_settings(index)
    return float(settings.get("threshold", THRESHOLD)), int(settings.get("min_faces", MIN_FACES))


def _require_faces(index: IndexCore) -> None:
    if index.spec.kind != "photos" or not has_faces(index):
        raise FacesNotEnabled(f"index {index.name!r} has no faces: find them with pixsearch index PATH --faces "
                              f"--index {index.name}")


# -- detection ------------------------------------------------------------------------------------------------------
@dataclass
class _Scan:
    """A photo being scanned: its faces and their thumbnails, in pixels of the original, once decoded."""

    key: str
    path: str
    faces: list[DetectedFace] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    thumbs: list[str] = field(default_factory=list)


class _Describer:
    """The image stage's embedder for faces: its views are the aligned face crops, embedded into descriptors."""

    def __init__(self, model: FaceModel):
        self.model = model

    def prepare_image(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image)

    def embed_images(self, inputs: list[np.ndarray]) -> ImageEmbeddings:
        return ImageEmbeddings(vectors={FACE_FIELD: self.model.describe(inputs)})


def _found(model: FaceModel, scan: _Scan, decoded: DecodedImage) -> list[Image.Image]:
    """Detect the faces of a decoded photo (in a pool thread); their crops are what gets described."""
    image = decoded.image
    scan.faces = model.detect(image)
    sx, sy = decoded.width / image.width, decoded.height / image.height  # a drafted JPEG is smaller
    for face in scan.faces:
        x0, y0, x1, y1 = face.box
        scan.boxes.append((round(x0 * sx), round(y0 * sy), min(decoded.width, round(x1 * sx)),
                           min(decoded.height, round(y1 * sy))))
        scan.thumbs.append(_webp_base64(face_thumbnail(image, face.box)))
    return [Image.fromarray(face.chip) for face in scan.faces]


def _webp_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", quality=80)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def face_state(face: DetectedFace, detector: str) -> str:
    """AUTO when the face is large and sure enough to be grouped, else SMALL (kept, not grouped)."""
    return AUTO if face.side >= MIN_GROUP_SIDE and face.score >= MIN_GROUP_SCORE[detector] else SMALL


def detect_faces(index: IndexCore) -> FaceReport:
    """Find the faces of every photo not scanned yet, then group the new faces (see the module docstring)."""
    _require_faces(index)
    upgrade_photo_index(index)  # an index from before faces existed gets its people and face_count fields
    detector = face_settings(index).get("detector") or DEFAULT_DETECTOR
    model = shared_face_model(detector)
    settings = index.settings
    stage = ImageStage(_Describer(model), StageOptions(  # type: ignore[arg-type]
        batch_size=SCAN_BATCH, window=4, workers=settings.decode_workers, max_pixels=settings.max_image_pixels,
        draft=(DETECT_SIDE, DETECT_SIDE)))
    report = FaceReport()
    found: list[str] = []  # the new faces grouping looks at
    after = None
    while True:
        batch = index.store.keys_missing([FACE_COUNT_FIELD], after, SCAN_BATCH, extra=["path"])
        if not batch:
            break
        after = batch[-1][0]
        scans = [_Scan(key, values["path"]) for key, values in batch if values["path"]]
        counts: list[tuple[str, int]] = []
        rows: list[dict[str, Any]] = []
        for results in stage.run(scans, lambda scan: read_stored_photo(index, scan.path),
                                 views=lambda scan, decoded: _found(model, scan, decoded)):
            for result in results:
                scan = result.item
                if result.error is not None:
                    report.failed.append((scan.path, result.error))
                    continue
                vectors = result.embeddings.vectors.get(FACE_FIELD) if result.embeddings else None
                counts.append((scan.key, len(scan.faces)))
                rows.extend(_face_rows(scan, vectors, detector))
        index.store.faces.replace(counts, rows)
        found += [row["id"] for row in rows if row["face_state"] == AUTO]
        report.photos += len(counts)
        report.faces += len(rows)
    if report.faces:
        index.store.faces.analyze()
    if found:
        report.grouped, report.new_people = group_faces(index, found)
    with index.store.faces.session() as session:
        session.drop_empty_unnamed()  # people whose photos were all removed
    return report


def _face_rows(scan: _Scan, vectors: np.ndarray | None, detector: str) -> list[dict[str, Any]]:
    rows = []
    for i, (face, box, thumb) in enumerate(zip(scan.faces, scan.boxes, scan.thumbs)):
        region = f"f{i}"
        rows.append({"id": f"{scan.key}:{region}", PHOTO_KEY: scan.key, "region": region, "x0": box[0],
                     "y0": box[1], "x1": box[2], "y1": box[3], "label": "face", "score": round(face.score, 4),
                     "source": FACE_SOURCE, "person": None, "face_state": face_state(face, detector),
                     "thumb": thumb, FACE_FIELD: vectors[i] if vectors is not None else None})
    return rows


# -- grouping -------------------------------------------------------------------------------------------------------
def group_faces(index: IndexCore, face_ids: Sequence[str] | None = None) -> tuple[int, int]:
    """Place ungrouped faces (see the module docstring): `face_ids` (the faces a run just found), or every
    ungrouped face. A face placed brings its ungrouped neighbours within the threshold up for another look, so a
    face that waited joins as soon as a person forms or grows next to it — without looking at every waiting face of
    the library on each run. (faces grouped, people made); the photos whose people changed get their `people` field
    refreshed in the same transaction."""
    threshold, min_faces = _grouping(index)
    grouped = made = 0
    touched: set[str] = set()
    with index.store.faces.session() as session:
        queue: deque[tuple[str, Any]] = deque(session.ungrouped(face_ids))
        queued = {face_id for face_id, _ in queue}
        placed: set[str] = set()
        while queue:
            face_id, vector = queue.popleft()
            queued.discard(face_id)
            near = _near(session, face_id, vector, threshold)
            faces, new = _place(session, face_id, near, min_faces) if face_id not in placed else ([], 0)
            placed.update(faces)
            grouped += len(faces)
            made += new
            touched.update(_photo_of(f) for f in faces)
            if face_id not in placed:
                continue
            # the faces just placed may reach ungrouped faces the first one does not: they look around too
            around = [f for f in faces if f != face_id and f not in queued]
            waiting = [hit.id for hit in near if hit.document.get("person") is None and hit.id not in placed]
            for other in [*around, *waiting]:
                if other not in queued:
                    found = session.face(other, descriptor=True)
                    if found is not None and found[FACE_FIELD] is not None:
                        queue.append((other, found[FACE_FIELD]))
                        queued.add(other)
        session.drop_empty_unnamed()
        session.refresh_people_field(sorted(touched))
    return grouped, made


def _near(session: FaceSession, face_id: str, vector: Any, threshold: float) -> list[Hit]:
    """The groupable faces within the threshold of a face, nearest first."""
    return [hit for hit in session.neighbours(vector, NEIGHBOURS).hits
            if hit.id != face_id and hit.distance <= threshold]


def _place(session: FaceSession, face_id: str, near: list[Hit], min_faces: int) -> tuple[list[str], int]:
    """Put one face in a person: the nearest grouped face's, else a new person with its ungrouped neighbours when
    there are enough. The faces placed (none: it waits) and whether a person was made."""
    with_person = [hit for hit in near if hit.document.get("person") is not None]
    if with_person:
        session.assign([face_id], with_person[0].document["person"])
        return [face_id], 0
    if len(near) + 1 >= min_faces:
        person = session.new_person()
        faces = [face_id] + [hit.id for hit in near]
        session.assign(faces, person)
        return faces, 1
    return [], 0


def _photo_of(face_id: str) -> str:
    return face_id.rsplit(":", 1)[0]


def recluster(index: IndexCore, *, threshold: float | None = None, min_faces: int | None = None) -> tuple[int, int]:
    """Dissolve the unnamed people and group every ungrouped face again (named people stay); a new threshold or
    min_faces is remembered for later runs. (faces grouped, people made)."""
    _require_faces(index)
    changes: dict[str, Any] = {}
    if threshold is not None:
        if not 0 < threshold < 2:
            raise ValueError("threshold must be between 0 and 2 (L2 distance between face descriptors)")
        changes["threshold"] = threshold
    if min_faces is not None:
        if not 1 <= min_faces <= 1000:
            raise ValueError("min_faces must be between 1 and 1000")
        changes["min_faces"] = min_faces
    if changes:
        index.update_settings({"faces": {**face_settings(index), **changes}})
    with index.store.faces.session() as session:
        session.refresh_people_field(session.ungroup_unnamed())
    return group_faces(index)


# -- people ---------------------------------------------------------------------------------------------------------
def list_people(index: IndexCore, *, with_photos: bool = False, ids: Sequence[int] | None = None
                ) -> list[dict[str, Any]]:
    """Every person with faces, named first, then by faces: id, name, faces, photo_count, sample_face, sample_photo
    ({id, path}); with_photos: `photos`, the ids and paths of every photo they are in."""
    _require_faces(index)
    with index.store.faces.session() as session:
        people = session.people(ids)
        photos = {p["id"]: session.person_photos([p["id"]]) for p in people} if with_photos else {}
    keys = {_photo_of(p["sample_face"]) for p in people} | {k for ks in photos.values() for k in ks}
    paths = {key: row.get("path") for key, row in index.store.select(sorted(keys), ["path"]).items()} if keys else {}
    for person in people:
        sample = _photo_of(person["sample_face"])
        person["sample_photo"] = {"id": sample, "path": paths.get(sample)}
        if with_photos:
            person["photos"] = [{"id": key, "path": paths.get(key)} for key in photos[person["id"]]]
    return people


def get_person(index: IndexCore, person: int) -> dict[str, Any]:
    found = list_people(index, with_photos=True, ids=[person])
    if not found:
        raise PersonNotFound(f"no person {person} in index {index.name!r}")
    return found[0]


def check_name(name: str) -> str:
    cleaned = " ".join(str(name).split())
    if not cleaned:
        raise ValueError("a person's name cannot be empty")
    if len(cleaned) > MAX_NAME_CHARS:
        raise ValueError(f"a person's name has at most {MAX_NAME_CHARS} characters")
    if _CONTROL.search(cleaned):
        raise ValueError("a person's name cannot hold control characters")
    if cleaned.isdigit():
        raise ValueError("a person's name cannot be only digits: the people field holds unnamed people by their id")
    return cleaned


def name_person(index: IndexCore, person: int, name: str | None) -> dict[str, Any]:
    """Name a person (None: unname); their photos' people field follows. Returns the person, with `same_name`:
    the other people of that name (candidates for a merge)."""
    _require_faces(index)
    cleaned = check_name(name) if name is not None else None
    with index.store.faces.session() as session:
        if not session.rename(person, cleaned):
            raise PersonNotFound(f"no person {person} in index {index.name!r}")
        session.refresh_people_field(session.person_photos([person]))
        same = [p for p in session.named(cleaned) if p != person] if cleaned else []
    return {"id": person, "name": cleaned, "same_name": same}


def merge_people(index: IndexCore, into: int, others: Sequence[int]) -> dict[str, Any]:
    """`others`' faces become `into`'s (which keeps its name, or takes theirs if it has none); the others go."""
    _require_faces(index)
    others = [o for o in dict.fromkeys(int(o) for o in others) if o != into]
    if not others:
        raise ValueError("name at least one other person to merge")
    with index.store.faces.session() as session:
        for person in [into, *others]:
            if not session.person_exists(person):
                raise PersonNotFound(f"no person {person} in index {index.name!r}")
        photos = session.person_photos([into, *others])
        session.merge(into, others)
        session.refresh_people_field(photos)
    return get_person(index, into)


def remove_face(index: IndexCore, face_id: str) -> dict[str, Any]:
    """Take a face off its person (it stays, ungrouped, and is never grouped automatically again)."""
    _require_faces(index)
    with index.store.faces.session() as session:
        face = session.face(face_id)
        if face is None:
            raise FaceNotFound(f"no face {face_id!r} in index {index.name!r}")
        session.remove_face(face_id)
        session.refresh_people_field([face["photo"]])
        face.update(person=None, name=None, state=REMOVED)
    return face


def forget_person(index: IndexCore, person: int) -> int:
    """Delete a person and their faces — boxes, thumbnails and descriptors (biometric data); faces deleted. Their
    photos are not scanned again unless their files change."""
    _require_faces(index)
    with index.store.faces.session() as session:
        if not session.person_exists(person):
            raise PersonNotFound(f"no person {person} in index {index.name!r}")
        photos = session.person_photos([person])
        deleted = session.forget([person])
        session.refresh_people_field(photos)
    return deleted


def forget_all(index: IndexCore) -> int:
    """Delete every face, descriptor and person of the index, clear the photos' face fields and turn detection
    off; faces deleted."""
    _require_faces(index)
    with index.store.faces.session() as session:
        deleted = session.forget_all()
    set_faces(index, False)
    return deleted


# -- faces ----------------------------------------------------------------------------------------------------------
def photo_faces(index: IndexCore, photo_key: str) -> list[dict[str, Any]]:
    """A photo's faces: id, box (pixels of the upright original), score, person, name, state. No descriptors."""
    _require_faces(index)
    with index.store.faces.session() as session:
        return session.photo_faces([photo_key])


def face_thumbnail_bytes(index: IndexCore, face_id: str) -> bytes:
    """The stored WebP thumbnail of a face."""
    _require_faces(index)
    with index.store.faces.session() as session:
        face = session.face(face_id, thumb=True)
    if face is None or not face.get("thumb"):
        raise FaceNotFound(f"no face {face_id!r} in index {index.name!r}")
    return base64.b64decode(face["thumb"])


def photos_with_face(index: IndexCore, *, face_id: str | None = None, image: bytes | Image.Image | None = None,
                     k: int = 50) -> list[dict[str, Any]]:
    """The photos of the person whose face this is — a stored face, or the largest face found in an image —
    ranked by their nearest face's similarity to it: every photo of the face's person, and the photos with a face
    within the grouping threshold. Each hit: id, path, score (1 / (1 + distance)), distance, face (the matching
    face's id and box)."""
    _require_faces(index)
    if (face_id is None) == (image is None):
        raise ValueError("give a face id or an image")
    threshold, _ = _grouping(index)
    person = None
    if face_id is not None:
        with index.store.faces.session() as session:
            face = session.face(face_id, descriptor=True)
        if face is None:
            raise FaceNotFound(f"no face {face_id!r} in index {index.name!r}")
        vector, person = face[FACE_FIELD], face["person"]
        if vector is None:
            raise FaceNotFound(f"face {face_id!r} has no descriptor")
    else:
        vector = largest_face_descriptor(index, image)
    best: dict[str, tuple[float, str]] = {}
    hits = index.store.faces.near(vector, max(4 * k, 100), person)
    for hit in hits:
        if hit.distance > threshold and (person is None or hit.document.get("person") != person):
            continue
        photo = hit.document[PHOTO_KEY]
        if photo not in best or hit.distance < best[photo][0]:
            best[photo] = (hit.distance, hit.id)
    ranked = sorted(best.items(), key=lambda item: (item[1][0], item[0]))[:k]
    paths = index.store.select([key for key, _ in ranked], ["path"]) if ranked else {}
    boxes = {hit.id: [hit.document[c] for c in ("x0", "y0", "x1", "y1")] for hit in hits}
    return [{"id": key, "path": (paths.get(key) or {}).get("path"), "score": 1.0 / (1.0 + distance),
             "distance": distance, "face": {"id": face, "box": boxes[face]}}
            for key, (distance, face) in ranked]


def largest_face_descriptor(index: IndexCore, image: bytes | Image.Image) -> np.ndarray:
    """The descriptor of the largest face in an image (ValueError when it has none)."""
    detector = face_settings(index).get("detector") or DEFAULT_DETECTOR
    model = shared_face_model(detector)
    if isinstance(image, bytes):
        image = decode_bytes(image, max_pixels=index.settings.max_image_pixels, draft=(DETECT_SIDE, DETECT_SIDE)).image
    faces = model.detect(image)
    if not faces:
        raise ValueError("no face found in the image")
    return model.describe([faces[0].chip])[0]
