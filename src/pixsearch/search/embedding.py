"""A ranked list's query vector: its texts and images embedded by the index's model (before any database work),
then, inside the search's snapshot, its stored ids' vectors read and every term weighted and summed."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from pixsearch.search.context import IndexModel, SearchContext
from pixsearch.search.expressions import Term, combine
from pixsearch.store import Reader, SchemaError, VectorField


@dataclass
class EmbeddedTerms:
    """A list's terms with everything the model can do done: each term's vector, or None for stored ids, which are
    read in the search's snapshot."""

    field: str
    terms: list[Term]
    vectors: list[np.ndarray | None]


def choose_field(ctx: SearchContext, terms: Sequence[Term], field_name: str | None) -> str:
    """The field given; else images and stored ids without text search the image space ("more like this": looks,
    not only meaning), and anything with text searches the text space."""
    if field_name is not None:
        return ctx.spec.vector_field(field_name).name
    if ctx.model is None:
        return ctx.spec.vector_field(None).name
    model = ctx.model()
    if {t.kind for t in terms} <= {"image", "id", "ids"} or model.text_field is None:
        return model.image_field
    return model.text_field


def embed_terms(ctx: SearchContext, terms: Sequence[Term], field_name: str | None) -> EmbeddedTerms:
    """Embed the texts and images of one list (cached per model and text / image content)."""
    field_name = choose_field(ctx, terms, field_name)
    vf = ctx.spec.vector_field(field_name)
    vectors: list[np.ndarray | None] = []
    for t in terms:
        if t.kind in ("text", "image"):
            model = _model_for(ctx, vf, t.kind)
            if t.kind == "text":
                if field_name != model.text_field:
                    raise ValueError(f"text cannot be searched in the {field_name!r} field; use {model.text_field!r}")
                text = t.value
                vectors.append(ctx.query_vectors.get(("text", model.model_id, text), lambda: model.embed_text(text)))
            else:
                if not getattr(model.embedder, "embeds_images", True):
                    raise ValueError(
                        f"index {ctx.spec.name!r} uses {model.embedder.name!r}, a text model: its photos are found "
                        "through their captions (people's and generated ones), not by image; search it with text, "
                        "or with stored ids (photos with similar captions)")
                vectors.append(_embed_image(ctx, model, t.value)[field_name])
        elif t.kind in ("id", "ids"):
            vectors.append(None)
        else:  # raw vector
            array = np.asarray(t.value, dtype=np.float32).reshape(-1)
            if array.shape[0] != vf.dims:
                raise ValueError(f"vector field {vf.name!r} has {vf.dims} dimensions, the query vector has {array.shape[0]}")
            vectors.append(array)
    return EmbeddedTerms(field_name, list(terms), vectors)


def _model_for(ctx: SearchContext, vf: VectorField, kind: str) -> IndexModel:
    what = "text" if kind == "text" else "images"
    if ctx.model is None or not vf.model_id:
        raise SchemaError(f"index {ctx.spec.name!r} has no model to embed {what}: search it with a vector")
    model = ctx.model()
    if vf.name not in model.columns.values():
        raise ValueError(f"the {vf.name!r} field holds vectors of an earlier model ({vf.model_id}): search it with "
                         "stored ids or a vector, or search the current model's field")
    return model


def _embed_image(ctx: SearchContext, model: IndexModel, image: str | Path | bytes | Image.Image) -> dict[str, np.ndarray]:
    def embed() -> dict[str, np.ndarray]:
        return model.embed_image(image if isinstance(image, Image.Image) else ctx.open_image(image))

    if isinstance(image, (bytes, bytearray)):  # uploads: the same bytes come back for every page
        digest = hashlib.blake2b(image, digest_size=16).digest()
        return ctx.query_vectors.get(("image", model.model_id, digest, tuple(sorted(model.columns.items()))), embed)
    return embed()


def combine_embedded(reader: Reader, embedded: EmbeddedTerms) -> np.ndarray:
    """The list's query vector: stored ids' vectors read (their mean per term), all terms weighted and summed."""
    vf = reader.spec.vector_field(embedded.field)
    needed = [key for t in embedded.terms if t.kind in ("id", "ids") for key in _keys(t)]
    stored = reader.select(needed, [vf.name]) if needed else {}
    vectors = []
    for t, vector in zip(embedded.terms, embedded.vectors):
        if vector is None:
            keys = _keys(t)
            missing = [key for key in keys if key not in stored]
            if missing:
                raise ValueError(f"unknown id(s) in index {reader.spec.name!r}: {', '.join(missing)}")
            items = [stored[key].get(vf.name) for key in keys]
            if any(v is None for v in items):
                raise ValueError(f"some of {', '.join(keys)} have no {vf.name!r} vector")
            vector = np.mean(np.stack([np.asarray(v.to_numpy(), dtype=np.float32) for v in items]), axis=0)
        vectors.append(vector)
    return combine(vectors, [t.weight for t in embedded.terms], normalise=vf.exact_metric == "cosine")


def _keys(term: Term) -> list[str]:
    return [term.value] if term.kind == "id" else list(term.value)
