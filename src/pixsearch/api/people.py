"""Faces and people over REST (service/faces.py). Query keys read: people, a person's photos, a photo's faces (boxes
and names), face thumbnails, photos of a face. Admin keys write: turn faces on or off, name, merge, remove a face
from its person, forget a person, forget every face, regroup. No route ever returns a face descriptor.
"""
from __future__ import annotations

from typing import Annotated, Any, Callable

from fastapi import Body, FastAPI, File, Path, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from pixsearch.api.errors import ApiError
from pixsearch.limits import MAX_TOP, MAX_UPLOAD_BYTES
from pixsearch.models.faces import DETECTORS, FacesUnavailable
from pixsearch.service import FaceNotFound, FacesNotEnabled, Index, PersonNotFound
from pixsearch.service.faces import MAX_NAME_CHARS

# The (method, path) patterns of the routes a query key may use (api/keys.py adds them to its QUERY_ROUTES).
QUERY_PATTERNS = (
    ("GET", r"^/indexes/[^/]+/people$"),
    ("GET", r"^/indexes/[^/]+/people/[^/]+$"),
    ("GET", r"^/indexes/[^/]+/photos/[^/]+/faces$"),
    ("GET", r"^/indexes/[^/]+/faces/[^/]+/thumbnail$"),
    ("GET", r"^/indexes/[^/]+/faces/[^/]+/photos$"),
    ("POST", r"^/indexes/[^/]+/faces/search$"),
)


class FacesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool
    detector: str | None = Field(None, description=f"one of {', '.join(DETECTORS)} (default: hog)")


class NameIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(..., max_length=MAX_NAME_CHARS, description="the person's name; null: unnamed")


class MergeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    people: list[Annotated[int, Field(ge=1, le=2**62)]] = Field(..., min_length=1, max_length=1000,
                                                                description="the people merged into this one")


class ReclusterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float | None = Field(None, gt=0, lt=2)
    min_faces: int | None = Field(None, ge=1, le=1000)


PersonId = Annotated[int, Path(ge=1, le=2**62, description="a person's id")]


def _thumbnail_url(index: str, face_id: str | None) -> str | None:
    return f"/indexes/{index}/faces/{face_id}/thumbnail" if face_id else None


class PeopleHandlers:
    def __init__(self, open_index: Callable[[str], Index]):
        self.open_index = open_index

    def _open(self, name: str) -> Index:
        return self.open_index(name)

    def _person_json(self, name: str, person: dict[str, Any]) -> dict[str, Any]:
        return {**person, "sample_face_url": _thumbnail_url(name, person.get("sample_face"))}

    def set_faces(self, name: str, body: FacesIn) -> dict[str, Any]:
        """Turn face detection on (then find the faces of every photo not scanned yet) or off (faces are kept)."""
        index = self._open(name)
        try:
            index.set_faces(body.enabled, detector=body.detector)
            report = index.detect_faces() if body.enabled else None
        except FacesUnavailable as exc:  # the server lacks dlib or its models
            raise ApiError(501, "FacesUnavailable", str(exc)) from None
        except ValueError as exc:  # an unknown detector; not a photo index
            raise ApiError(400, "InvalidRequest", str(exc)) from None
        return {"enabled": body.enabled, "report": report.to_json() if report is not None else None}

    def forget_faces(self, name: str) -> dict[str, Any]:
        """Delete every face, descriptor and person of the index and turn detection off."""
        return {"forgotten_faces": _call(self._open(name).forget_faces)}

    def list_people(self, name: str, photos: bool = Query(False, description="include each person's photos")
                    ) -> dict[str, Any]:
        people = _call(lambda: self._open(name).people(with_photos=photos))
        return {"value": [self._person_json(name, p) for p in people]}

    def get_person(self, name: str, person: PersonId) -> dict[str, Any]:
        return self._person_json(name, _call(lambda: self._open(name).person(person)))

    def name_person(self, name: str, person: PersonId, body: NameIn) -> dict[str, Any]:
        return _call(lambda: self._open(name).name_person(person, body.name))

    def merge_people(self, name: str, person: PersonId, body: MergeIn) -> dict[str, Any]:
        return self._person_json(name, _call(lambda: self._open(name).merge_people(person, body.people)))

    def forget_person(self, name: str, person: PersonId) -> dict[str, Any]:
        return {"id": person, "forgotten_faces": _call(lambda: self._open(name).forget_person(person))}

    def recluster(self, name: str, body: ReclusterIn = Body(ReclusterIn())) -> dict[str, Any]:
        grouped, made = _call(lambda: self._open(name).recluster_people(threshold=body.threshold,
                                                                        min_faces=body.min_faces))
        return {"grouped": grouped, "new_people": made}

    def photo_faces(self, name: str, key: str) -> dict[str, Any]:
        faces = _call(lambda: self._open(name).photo_faces(key))
        return {"value": [{**f, "thumbnail_url": _thumbnail_url(name, f["id"])} for f in faces]}

    def face_thumbnail(self, name: str, face: str) -> Response:
        data = _call(lambda: self._open(name).face_thumbnail(face))
        return Response(data, media_type="image/webp", headers={"Cache-Control": "private, max-age=3600"})

    def remove_face(self, name: str, face: str) -> dict[str, Any]:
        return _call(lambda: self._open(name).remove_face(face))

    def face_photos(self, name: str, face: str, top: int = Query(50, ge=1, le=MAX_TOP)) -> dict[str, Any]:
        return {"value": _call(lambda: self._open(name).photos_with_face(face_id=face, k=top))}

    def search_by_face(self, name: str, image: UploadFile = File(..., description="a photo; its largest face"),
                       top: int = Query(50, ge=1, le=MAX_TOP)) -> dict[str, Any]:
        data = image.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise ApiError(400, "InvalidRequest", f"image larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        return {"value": _call(lambda: self._open(name).photos_with_face(image=data, k=top))}


def _call(work: Callable[[], Any]) -> Any:
    """The service's errors as HTTP answers."""
    try:
        return work()
    except (PersonNotFound, FaceNotFound) as exc:
        raise ApiError(404, "NotFound", str(exc)) from None
    except FacesNotEnabled as exc:
        raise ApiError(400, "FacesNotEnabled", str(exc)) from None
    except ValueError as exc:  # a bad name, no face in the image, an unreadable image
        raise ApiError(400, "InvalidRequest", str(exc)) from None
    except FacesUnavailable as exc:  # the server lacks dlib or its models
        raise ApiError(501, "FacesUnavailable", str(exc)) from None


def install_people(app: FastAPI, open_index: Callable[[str], Index]) -> None:
    h = PeopleHandlers(open_index)
    app.add_api_route("/indexes/{name}/faces", h.set_faces, methods=["PUT"])
    app.add_api_route("/indexes/{name}/faces", h.forget_faces, methods=["DELETE"])
    app.add_api_route("/indexes/{name}/faces/search", h.search_by_face, methods=["POST"])
    app.add_api_route("/indexes/{name}/faces/{face}/thumbnail", h.face_thumbnail, methods=["GET"])
    app.add_api_route("/indexes/{name}/faces/{face}/photos", h.face_photos, methods=["GET"])
    app.add_api_route("/indexes/{name}/faces/{face}/person", h.remove_face, methods=["DELETE"])
    app.add_api_route("/indexes/{name}/photos/{key}/faces", h.photo_faces, methods=["GET"])
    app.add_api_route("/indexes/{name}/people", h.list_people, methods=["GET"])
    app.add_api_route("/indexes/{name}/people/recluster", h.recluster, methods=["POST"])  # before /people/{person}
    app.add_api_route("/indexes/{name}/people/{person}", h.get_person, methods=["GET"])
    app.add_api_route("/indexes/{name}/people/{person}", h.name_person, methods=["PATCH"])
    app.add_api_route("/indexes/{name}/people/{person}", h.forget_person, methods=["DELETE"])
    app.add_api_route("/indexes/{name}/people/{person}/merge", h.merge_people, methods=["POST"])
