#!/usr/bin/env python3
"""Regenerate src/pixsearch/models/data/imagenet_classes.tsv (the 1000 ImageNet-1k classes).

Columns (tab separated, with a header line):
    index       class index in the standard ImageNet-1k order (= sorted synset ids), the classifier's output order
    synset      WordNet 3.0 noun synset id, e.g. n01440764
    names       all lemma names, ", "-joined, e.g. "tench, Tinca tinca"
    definition  the WordNet gloss
    parent      first lemma of the synset's first hypernym (instance hypernym if it has none), e.g. "cyprinid"

Inputs, used only here (the runtime reads the TSV alone):
  * timm's class info files: imagenet_synsets.txt, imagenet_synset_to_lemma.txt, imagenet_synset_to_definition.txt
    from the timm wheel's timm/data/_info/ folder;
  * WordNet 3.0's data.noun (Debian package wordnet-base: /usr/share/wordnet/data.noun).

How to rerun:
    apt-get install wordnet-base
    pip download timm --no-deps -d /tmp/timm-wheel
    python -m zipfile -e /tmp/timm-wheel/timm-*.whl /tmp/timm-wheel/x
    python scripts/build_imagenet_classes.py --info-dir /tmp/timm-wheel/x/timm/data/_info
(--info-dir may be left out when timm is importable; --wordnet and --out have the defaults shown by --help.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "pixsearch" / "models" / "data" / "imagenet_classes.tsv"
DEFAULT_WORDNET = Path("/usr/share/wordnet/data.noun")
HEADER = ("index", "synset", "names", "definition", "parent")

# Sanity anchors of the standard order.
EXPECTED = {0: "tench", 1: "goldfish", 281: "tabby", 967: "espresso"}


def read_two_columns(path: Path) -> dict[str, str]:
    table = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            key, value = line.split("\t", 1)
            table[key] = value.strip()
    return table


def parse_wordnet_nouns(path: Path, wanted: set[str]) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """offset -> (lemmas, hypernym offsets, instance-hypernym offsets) for the wanted offsets and their parents."""
    entries: dict[str, tuple[list[str], list[str], list[str]]] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("  "):  # licence header
                continue
            fields = line.split(" | ", 1)[0].split()
            offset = fields[0]
            word_count = int(fields[3], 16)
            lemmas = [fields[4 + 2 * i] for i in range(word_count)]
            pos = 4 + 2 * word_count
            pointer_count = int(fields[pos])
            hypernyms, instance_of = [], []
            for i in range(pointer_count):
                symbol, target, target_pos = fields[pos + 1 + 4 * i : pos + 4 + 4 * i]
                if target_pos != "n":
                    continue
                if symbol == "@":
                    hypernyms.append(target)
                elif symbol == "@i":
                    instance_of.append(target)
            entries[offset] = (lemmas, hypernyms, instance_of)
    missing = wanted - entries.keys()
    if missing:
        raise SystemExit(f"{len(missing)} synsets not in {path} (is it WordNet 3.0?): {sorted(missing)[:5]}")
    return entries


def clean_lemma(lemma: str) -> str:
    return lemma.replace("_", " ")


def build(info_dir: Path, wordnet: Path) -> list[tuple[str, ...]]:
    synsets = sorted(
        line.strip() for line in (info_dir / "imagenet_synsets.txt").read_text(encoding="utf-8").splitlines()
        if line.strip()
    )
    if len(synsets) != 1000 or len(set(synsets)) != 1000:
        raise SystemExit(f"expected 1000 distinct synsets, got {len(synsets)}")
    lemmas = read_two_columns(info_dir / "imagenet_synset_to_lemma.txt")
    definitions = read_two_columns(info_dir / "imagenet_synset_to_definition.txt")
    offsets = {s: s[1:] for s in synsets}
    nouns = parse_wordnet_nouns(wordnet, set(offsets.values()))

    rows = []
    for index, synset in enumerate(synsets):
        _, hypernyms, instance_of = nouns[offsets[synset]]
        parents = hypernyms or instance_of
        if not parents:
            raise SystemExit(f"{synset} has no hypernym in WordNet")
        parent = clean_lemma(nouns[parents[0]][0][0]) if parents[0] in nouns else None
        if parent is None:
            raise SystemExit(f"hypernym {parents[0]} of {synset} not found")
        row = (str(index), synset, lemmas[synset], definitions[synset], parent)
        if any("\t" in f or "\n" in f for f in row):
            raise SystemExit(f"tab or newline in row {row}")
        rows.append(row)

    for index, first in EXPECTED.items():
        got = rows[index][2].split(", ")[0]
        if got != first:
            raise SystemExit(f"index {index}: expected {first!r}, got {got!r} - synset order is wrong")
    return rows


def default_info_dir() -> Path | None:
    try:
        import timm  # noqa: PLC0415
    except ImportError:
        return None
    return Path(timm.__file__).parent / "data" / "_info"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--info-dir", type=Path, default=None, help="timm/data/_info folder (default: installed timm)")
    parser.add_argument("--wordnet", type=Path, default=DEFAULT_WORDNET, help="WordNet 3.0 data.noun")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    info_dir = args.info_dir or default_info_dir()
    if info_dir is None:
        parser.error("timm is not importable: pass --info-dir (see the docstring for how to get the files)")
    rows = build(info_dir, args.wordnet)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write("\t".join(HEADER) + "\n")
        for row in rows:
            fh.write("\t".join(row) + "\n")
    tmp.replace(args.out)
    print(f"wrote {len(rows)} classes to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
