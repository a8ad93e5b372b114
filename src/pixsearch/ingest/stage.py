"""The one image stage: read -> decode -> prepare -> embed, for everything that turns files into image vectors
(ingest, regions, reindex).

An ImageStage holds only an embedder and its options (no database, no index, no open files), so the same unit can
run in another process or on another machine. Each use gives it the items and how to read one; the stage decodes
(bounded by max_pixels, JPEGs drafted), prepares the model's inputs in a thread pool, embeds them in batches in the
caller's thread, and yields the results a batch at a time, in input order.

Memory stays bounded: at most `window` items are being read and `window` decoded at once, and a batch holds at most
`batch_size` items; an item's bytes are dropped once decoded and its pixels once prepared.

One set of error rules: DecodeError, PhotoNotFound, ValueError and OSError raised while reading, decoding or
preparing an item make that item a failure with its reason (the others go on); anything else is a bug and is raised.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Generic, Iterable, Iterator, Sequence, TypeVar

from PIL import Image

from pixsearch.ingest.decode import DRAFT_SIZE, DecodedImage, DecodeError, Describe, decode_bytes
from pixsearch.limits import DEFAULT_MAX_IMAGE_PIXELS
from pixsearch.models.base import Embedder, ImageEmbeddings

T = TypeVar("T")
R = TypeVar("R")


class PhotoNotFound(LookupError):
    """A stored photo's file cannot be opened (missing, or outside the folders its index may open)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# What a read, decode or prepare step may raise for one bad item; anything else stops the run.
ITEM_FAILURES = (DecodeError, PhotoNotFound, ValueError, OSError)


@dataclass(frozen=True)
class ImageBytes:
    """What a read step gives when it knows more than the bytes: their content hash (saves hashing again) and a
    `describe(image, exif)` to run on the file as opened (see decode_bytes)."""

    data: bytes
    digest: str | None = None
    describe: Describe | None = None


Read = Callable[[Any], "bytes | ImageBytes | None"]  # None: nothing to decode for this item (it passes through)
Views = Callable[[Any, DecodedImage], Sequence[Image.Image]]  # the images of a decoded item to embed
Sift = Callable[[list], Sequence[bool]]  # for a batch of items read, which still need decoding


@dataclass(frozen=True)
class StageOptions:
    batch_size: int = 16  # items (or model inputs) embedded together
    workers: int = 2  # threads that read, decode and prepare
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    draft: tuple[int, int] | None = DRAFT_SIZE  # JPEGs are decoded at the smallest scale keeping this size
    window: int | None = None  # items read (and decoded) ahead at most; None: batch_size

    @property
    def ahead(self) -> int:
        return max(1, self.window or self.batch_size)

    @property
    def in_flight_limit(self) -> int:
        """The most items between the start of their read and their batch being handed back: the read and decode
        windows, a sifted batch waiting for its lookup, and the batch being filled."""
        return 2 * self.ahead + 2 * self.batch_size


@dataclass
class StageResult(Generic[T]):
    """One item's outcome. error: why it failed (nothing else is set). decoded: its facts, pixels released.
    embeddings: one row per image its views gave (None when it was not decoded: failed, or passed through)."""

    item: T
    error: str | None = None
    decoded: DecodedImage | None = None
    embeddings: ImageEmbeddings | None = None
    seconds: float = 0.0  # spent reading, decoding and preparing it (in a pool thread)
    data: ImageBytes | None = field(default=None, repr=False)  # read, not yet decoded
    inputs: list[Any] = field(default_factory=list, repr=False)  # prepared, not yet embedded


@dataclass
class StageBatch(Generic[T]):
    results: list[StageResult[T]]
    embed_seconds: float = 0.0

    def __iter__(self) -> Iterator[StageResult[T]]:
        return iter(self.results)


def whole_image(item: Any, decoded: DecodedImage) -> list[Image.Image]:
    return [decoded.image]


class ImageStage:
    """Read -> decode -> prepare -> embed for one embedder and one set of options (see the module docstring)."""

    def __init__(self, embedder: Embedder, options: StageOptions = StageOptions()):
        self.embedder, self.options = embedder, options

    def run(self, items: Iterable[T], read: Read, *, views: Views = whole_image,
            sift: Sift | None = None) -> Iterator[StageBatch[T]]:
        """The items' results, a batch at a time, in input order. `read(item)` gives the item's bytes (None: it
        passes through undecoded); `views(item, decoded)` the images to embed (default: the whole image);
        `sift(items)`, called in this thread with up to batch_size items that were read, says which still need
        decoding (e.g. a moved file found by its content hash needs none)."""
        with ThreadPoolExecutor(max_workers=self.options.workers, thread_name_prefix="pixsearch-images") as pool:
            loaded = bounded_map(pool, partial(self._read, read), items, self.options.ahead)
            if sift is not None:
                loaded = self._sifted(loaded, sift)
            prepared = bounded_map(pool, partial(self._prepare, views), loaded, self.options.ahead)
            yield from self._batches(prepared)

    def read_batch(self, items: Sequence[T], read: Read) -> list[StageResult[T]]:
        """The first half of run() for one batch: the items read (in the pool threads), nothing decoded. For a
        runner that sifts the batch elsewhere and then calls finish_batch (ingest/distributed.py)."""
        with ThreadPoolExecutor(max_workers=self.options.workers, thread_name_prefix="pixsearch-images") as pool:
            return list(pool.map(partial(self._read, read), items))

    def finish_batch(self, results: Sequence[StageResult[T]], views: Views = whole_image) -> list[StageBatch[T]]:
        """The second half: the results read (those with data) decoded and prepared in the pool threads, then
        embedded, grouped into batches as run() groups them."""
        with ThreadPoolExecutor(max_workers=self.options.workers, thread_name_prefix="pixsearch-images") as pool:
            prepared = list(pool.map(partial(self._prepare, views), results))
        return list(self._batches(prepared))

    def _read(self, read: Read, item: T) -> StageResult[T]:
        result = StageResult(item)
        t0 = time.perf_counter()
        try:
            data = read(item)
            result.data = data if data is None or isinstance(data, ImageBytes) else ImageBytes(bytes(data))
        except ITEM_FAILURES as exc:
            result.error = str(exc)
        result.seconds += time.perf_counter() - t0
        return result

    def _sifted(self, results: Iterable[StageResult[T]], sift: Sift) -> Iterator[StageResult[T]]:
        batch: list[StageResult[T]] = []
        for result in results:
            batch.append(result)
            if len(batch) >= self.options.batch_size:
                yield from _sift(batch, sift)
                batch = []
        yield from _sift(batch, sift)

    def _prepare(self, views: Views, result: StageResult[T]) -> StageResult[T]:
        """Decode the item's bytes and prepare its views for the model (in a pool thread)."""
        if result.data is None:
            return result
        data, result.data = result.data, None
        t0 = time.perf_counter()
        try:
            decoded = decode_bytes(data.data, data.digest, max_pixels=self.options.max_pixels,
                                   draft=self.options.draft, describe=data.describe)
            result.inputs = [self._prepared(image) for image in views(result.item, decoded)]
            decoded.image = None  # only the model's inputs are kept until the batch is embedded
            result.decoded = decoded
        except ITEM_FAILURES as exc:
            result.error, result.inputs = str(exc), []
        result.seconds += time.perf_counter() - t0
        return result

    def _prepared(self, image: Image.Image) -> Any:
        try:
            return self.embedder.prepare_image(image)
        except DecodeError:
            raise
        except (ValueError, OSError) as exc:  # PIL decoded it but cannot resample it (e.g. a 0-pixel side)
            raise DecodeError(f"cannot prepare image for the model: {exc}") from None

    def _batches(self, results: Iterable[StageResult[T]]) -> Iterator[StageBatch[T]]:
        """Results grouped into batches of batch_size items, or fewer once they hold batch_size model inputs."""
        batch: list[StageResult[T]] = []
        inputs = 0
        for result in results:
            batch.append(result)
            inputs += len(result.inputs)
            if len(batch) >= self.options.batch_size or inputs >= self.options.batch_size:
                yield self._embedded(batch)
                batch, inputs = [], 0
        if batch:
            yield self._embedded(batch)

    def _embedded(self, batch: list[StageResult[T]]) -> StageBatch[T]:
        """Embed the batch's inputs in one call and give each decoded item its rows."""
        out = StageBatch(batch)
        decoded = [r for r in batch if r.decoded is not None]
        inputs = [x for r in decoded for x in r.inputs]
        embeddings = ImageEmbeddings(vectors={})
        if inputs:
            t0 = time.perf_counter()
            embeddings = self.embedder.embed_images(inputs)
            out.embed_seconds = time.perf_counter() - t0
        start = 0
        for result in decoded:
            end = start + len(result.inputs)
            result.embeddings, result.inputs, start = _rows(embeddings, start, end), [], end
        return out


def _sift(batch: list[StageResult[T]], sift: Sift) -> list[StageResult[T]]:
    read = [r for r in batch if r.data is not None]
    if read:
        for result, keep in zip(read, sift([r.item for r in read])):
            if not keep:
                result.data = None
    return batch


def _rows(embeddings: ImageEmbeddings, start: int, end: int) -> ImageEmbeddings:
    return ImageEmbeddings(vectors={space: v[start:end] for space, v in embeddings.vectors.items()},
                           fields=embeddings.fields[start:end], classes=embeddings.classes[start:end])


def bounded_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """Like pool.map, in order, but with at most `window` items in flight so decoded pixels do not pile up."""
    in_flight: deque = deque()
    for item in items:
        in_flight.append(pool.submit(fn, item))
        if len(in_flight) >= window:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()
