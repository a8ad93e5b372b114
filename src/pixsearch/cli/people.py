"""`pixsearch people`: the people faces were grouped into (pixsearch index PATH --faces), naming, merging and
forgetting them, and the photos of a face."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pixsearch.cli.common import IndexOption, err, fail, open_engine, out, print_json

people_app = typer.Typer(no_args_is_help=True, help="People found in the photos (index them with --faces first).")


@people_app.command("list")
def list_cmd(
    index: Optional[str] = IndexOption,
    as_json: bool = typer.Option(False, "--json", help="A JSON list of {id, name, faces, photos: [{id, path}]}."),
) -> None:
    """Every person: id, name, faces, and a sample photo (named people first, then by faces)."""
    with open_engine(index) as engine:
        people = engine.index(index).people(with_photos=as_json)
    if as_json:
        print_json([{"id": p["id"], "name": p["name"], "faces": p["faces"], "photos": p["photos"],
                     "sample_face": p["sample_face"]} for p in people])
        return
    table = Table(show_edge=False)
    for column in ("id", "name", "faces", "photos", "sample photo"):
        table.add_column(column)
    for p in people:
        table.add_row(str(p["id"]), Text(p["name"] or "(unnamed)"), str(p["faces"]), str(p["photo_count"]),
                      Text(p["sample_photo"]["path"] or p["sample_photo"]["id"]))
    out.print(table)
    if not people:
        err.print("no people yet: faces form a person once a few look alike (pixsearch index PATH --faces)",
                  highlight=False)


@people_app.command("name")
def name_cmd(person: int, name: str, index: Optional[str] = IndexOption) -> None:
    """Name a person; `--filter "people/any(p: p eq 'NAME')"` then finds their photos."""
    with open_engine(index) as engine:
        result = engine.index(index).name_person(person, name)
    err.print(f"person {person} is now {escape(result['name'])}", highlight=False)
    if result["same_name"]:
        others = ", ".join(map(str, result["same_name"]))
        err.print(f"  also named so: {others} (the same person? pixsearch people merge {person} {others})",
                  highlight=False)


@people_app.command("merge")
def merge_cmd(person: int, others: List[int], index: Optional[str] = IndexOption) -> None:
    """Merge people into PERSON (it keeps its name, or takes theirs): their faces become its faces."""
    with open_engine(index) as engine:
        merged = engine.index(index).merge_people(person, others)
    err.print(f"person {person} ({escape(merged['name'] or 'unnamed')}) now has {merged['faces']} faces in "
              f"{merged['photo_count']} photos", highlight=False)


@people_app.command("remove-face")
def remove_face_cmd(face: str, index: Optional[str] = IndexOption) -> None:
    """Take a face (an id from `people faces` or the API) off its person; it is not grouped again."""
    with open_engine(index) as engine:
        engine.index(index).remove_face(face)
    err.print(f"face {escape(face)} removed from its person", highlight=False)


@people_app.command("forget")
def forget_cmd(
    person: Optional[int] = typer.Argument(None, help="The person to forget."),
    everything: bool = typer.Option(False, "--all", help="Every face and person of the index; turns --faces off."),
    index: Optional[str] = IndexOption,
) -> None:
    """Delete a person and their faces: boxes, thumbnails and face descriptors (biometric data)."""
    if (person is None) == (not everything):
        raise fail("give a person's id, or --all")
    with open_engine(index) as engine:
        idx = engine.index(index)
        deleted = idx.forget_faces() if everything else idx.forget_person(person)
    err.print(f"deleted {deleted} faces" + (" and every person; face detection is off" if everything else
                                            f" of person {person}"), highlight=False)


@people_app.command("recluster")
def recluster_cmd(
    index: Optional[str] = IndexOption,
    threshold: Optional[float] = typer.Option(None, help="Largest descriptor distance within a person (0.5)."),
    min_faces: Optional[int] = typer.Option(None, help="Faces that form a new person (3)."),
) -> None:
    """Group the faces again from scratch; named people are kept and attract their faces."""
    with open_engine(index) as engine:
        grouped, made = engine.index(index).recluster_people(threshold=threshold, min_faces=min_faces)
    err.print(f"{grouped} faces grouped, {made} new people", highlight=False)


@people_app.command("faces")
def faces_cmd(photo: str, index: Optional[str] = IndexOption,
              as_json: bool = typer.Option(False, "--json")) -> None:
    """The faces of a photo (its id, or its path): ids, boxes, people."""
    with open_engine(index) as engine:
        idx = engine.index(index)
        key = _photo_key(idx, photo)
        faces = idx.photo_faces(key)
    if as_json:
        print_json(faces)
        return
    for f in faces:
        who = f["name"] or (f"person {f['person']}" if f["person"] is not None else f"({f['state']})")
        out.print(Text(f"{f['id']}  {f['box']}  {who}"))


@people_app.command("photos")
def photos_cmd(
    face: Optional[str] = typer.Argument(None, help="A face id."),
    image: Optional[Path] = typer.Option(None, "--image", help="A photo: its largest face."),
    k: int = typer.Option(20, "--k"),
    index: Optional[str] = IndexOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Photos with this face, most similar first: every photo of its person and photos with a face like it."""
    if (face is None) == (image is None):
        raise fail("give a face id, or --image FILE")
    with open_engine(index) as engine:
        data = image.read_bytes() if image is not None else None
        hits = engine.index(index).photos_with_face(face_id=face, image=data, k=k)
    if as_json:
        print_json(hits)
        return
    for hit in hits:
        out.print(Text(f"{hit['score']:.3f}  {hit['path']}"))


def _photo_key(idx, photo: str) -> str:
    """A photo's id from its id or its path."""
    if idx.get([photo], vectors=False):
        return photo
    from pixsearch.ingest.scan import photo_id

    key = photo_id(str(Path(photo).expanduser().absolute()))
    if not idx.get([key], vectors=False):
        raise fail(f"no photo {photo!r} in index {idx.name!r}")
    return key
