"""The 1000 ImageNet-1k classes (standard index order) with names, WordNet definition and parent class.

Read from the packaged data/imagenet_classes.tsv (built by scripts/build_imagenet_classes.py); needs neither timm
nor WordNet at run time.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

NUM_CLASSES = 1000


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    synset: str  # WordNet 3.0 noun id, e.g. "n02123045"
    names: tuple[str, ...]  # e.g. ("tabby", "tabby cat")
    definition: str
    parent: str  # first lemma of the first WordNet hypernym, e.g. "domestic cat"

    @property
    def label(self) -> str:
        """Short human label: the first name."""
        return self.names[0]


@lru_cache(maxsize=1)
def load_imagenet_classes() -> tuple[ImageNetClass, ...]:
    """All 1000 classes, indexed by class id (result[i].index == i)."""
    text = resources.files(__package__).joinpath("data").joinpath("imagenet_classes.tsv").read_text(encoding="utf-8")
    reader = csv.DictReader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    classes = tuple(
        ImageNetClass(
            index=int(row["index"]),
            synset=row["synset"],
            names=tuple(n.strip() for n in row["names"].split(", ")),
            definition=row["definition"],
            parent=row["parent"],
        )
        for row in reader
    )
    if len(classes) != NUM_CLASSES or any(c.index != i for i, c in enumerate(classes)):
        raise RuntimeError("packaged imagenet_classes.tsv is corrupt: expected 1000 rows in index order")
    return classes

