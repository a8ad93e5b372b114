"""Photo indexes keep up with what later releases store: the photo fields added since an index was made, and the
caption vector field — each photo's title, description and keywords embedded in its model's text space, searched
as a list of its own in hybrid search (search/request.py).

Captions are embedded from the stored text, never from the image, so a caption field can be (re)filled at any time:
for an index made before captions existed, or after `pixsearch reindex` moved the index to another model (whose
text space the old caption vectors are not in).
"""
from __future__ import annotations

from typing import Sequence

from pixsearch.ingest.descriptions import GENERATED_CAPTION_FIELDS, caption_text, with_generated
from pixsearch.models.base import Embedder
from pixsearch.service.builds import ensure_ann_indexes
from pixsearch.service.core import IndexCore
from pixsearch.store import PHOTO_FIELDS, VectorField
from pixsearch.store.schema import CAPTION_FIELD

CAPTION_BATCH = 256
CAPTION_TEXT_FIELDS = ("title", "description", "keywords", *GENERATED_CAPTION_FIELDS)


def caption_vector_field(embedder: Embedder, vector_fields: Sequence[VectorField]) -> VectorField | None:
    """The caption field for a model: its text space's width, model and metric, stored and indexed like the field
    the text space fills (None for a model without a text tower)."""
    if embedder.text_space is None:
        return None
    space = embedder.spaces[embedder.text_space]
    text_field = next((vf for vf in vector_fields if vf.model_id == space.model_id and vf.space_name == space.name),
                      None)
    options = {"storage": text_field.storage, "algorithm": text_field.algorithm,
               "params": dict(text_field.params)} if text_field is not None else {}
    return VectorField(name=CAPTION_FIELD, dims=space.dims, model_id=space.model_id, metric=space.metric,
                       space=CAPTION_FIELD, **options)


def upgrade_photo_index(index: IndexCore) -> None:
    """Add what this release stores and the index lacks: photo fields (empty until their photos are indexed
    again), the lookup b-trees, and a caption field of the index's model (filled from the stored captions). Once per
    process for each index and model: an index this process has brought up to date stays so (nothing else here
    removes fields), so ingest batches and watch batches do not repeat the checks."""
    if index.spec.kind != "photos" or not index.modelled:
        return
    done = (index.name, index.spec.model)
    if done in index.engine.upgraded:
        return
    spec = index.spec
    have = {f.name for f in spec.fields}
    missing = tuple(f for f in PHOTO_FIELDS if f.name not in have)
    embedder = index.model().embedder
    wanted = caption_vector_field(embedder, spec.vector_fields)
    current = next((vf for vf in spec.vector_fields if vf.name == CAPTION_FIELD), None)
    stale = current is not None and (wanted is None or current.model_id != wanted.model_id)
    if stale:  # vectors of another model's text space: dropped, then made again below
        spec = index.redefine(vector_fields=tuple(vf for vf in spec.vector_fields if vf.name != CAPTION_FIELD),
                              fields=spec.fields, model=spec.model, drop=(CAPTION_FIELD,))
        current = None
    add_vectors = (wanted,) if wanted is not None and current is None else ()
    if missing or add_vectors:
        index.redefine(vector_fields=spec.vector_fields + add_vectors, fields=spec.fields + missing, model=spec.model,
                       add=(missing, add_vectors))
    index.store.create_lookup_indexes()
    if add_vectors and "title" in have:  # its photos may already carry captions (people's or generated ones)
        refresh_captions(index, embedder)
    ensure_ann_indexes(index)
    index.engine.upgraded.add(done)


def refresh_captions(index: IndexCore, embedder: Embedder) -> int:
    """Embed the stored captions of every photo that has one and no caption vector; the number embedded."""
    done, after = 0, None
    while True:
        rows = index.store.keys_missing([CAPTION_FIELD], after, CAPTION_BATCH, extra=CAPTION_TEXT_FIELDS)
        if not rows:
            return done
        after = rows[-1][0]
        texts = {key: with_generated(caption_text(values["title"], values["description"], values["keywords"]), values)
                 for key, values in rows}
        wanted = [key for key, text in texts.items() if text]
        if wanted:
            vectors = embedder.embed_texts([texts[key] for key in wanted])
            index.write_rows([{index.spec.key_field: key, CAPTION_FIELD: vector} for key, vector in zip(wanted, vectors)],
                             columns=[CAPTION_FIELD], insert_missing=False)
            done += len(wanted)
