"""The lean default install: the commands of the default path import none of the optional frameworks, and a feature
whose extra is missing says which extra to install.

Each command runs in a subprocess through CLI_WITH_MODULES, which runs the real CLI and then reports which modules
the process imported. An extra is made "missing" the way Python itself marks a module unavailable: None in
sys.modules, so both `import` and importlib.util.find_spec fail as for an uninstalled package. The installed wheel
without any extra is checked for real by scripts/check_wheel.sh (CI).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import copy_some

# Frameworks that only an extra brings (or only a test needs): the default path must never import them.
OPTIONAL = ("torch", "torchvision", "transformers", "sentence_transformers", "open_clip", "rapidocr", "cv2", "sklearn",
            "skimage", "scipy", "pandas", "ray", "dlib", "face_recognition", "s3fs", "adlfs", "boto3", "azure")
# The model runtimes: the default model uses them, but a command that loads no model must not.
RUNTIMES = ("onnxruntime", "onnx", "tokenizers", "safetensors")

CLI_WITH_MODULES = r"""
import json, sys
blocked, args = json.loads(sys.argv[1]), sys.argv[2:]
for name in blocked:
    sys.modules[name] = None  # as if not installed: import raises ImportError, find_spec returns None
from pixsearch.cli.main import app
try:
    app(args, prog_name="pixsearch")
    code = 0
except SystemExit as exc:
    code = exc.code or 0
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if "." not in m and sys.modules[m])}),
      file=sys.stderr)
"""
PHOTOS = ["cat-chelsea.png", "coffee.png", "rocket.jpg"]
# Modules that are a framework's by design: the offline model's torch reference network.
FRAMEWORK_MODULES = {"pixsearch.models.efficientnet_lite": {"torch"}}
IMPORT_EVERY_MODULE = r"""
import importlib, json, pkgutil, sys
import pixsearch
watched = json.loads(sys.argv[1])
found = {}
for info in pkgutil.walk_packages(pixsearch.__path__, "pixsearch."):
    before = {m for m in watched if m in sys.modules}
    importlib.import_module(info.name)
    new = sorted(m for m in watched if m in sys.modules and m not in before)
    if new:
        found[info.name] = new
print(json.dumps(found))
"""


def run_cli_reporting_modules(*args: str, home: Path, blocked: tuple[str, ...] = ()) -> tuple[int, str, str, set]:
    """(exit status, stdout, stderr without the report, top-level modules imported) of `pixsearch ARGS`."""
    import pixsearch

    env = dict(os.environ, PIXSEARCH_HOME=str(home), PYTHONPATH=str(Path(pixsearch.__file__).parents[1]))
    run = subprocess.run([sys.executable, "-c", CLI_WITH_MODULES, json.dumps(blocked), *args], capture_output=True,
                         text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    *stderr, report = run.stderr.rstrip("\n").split("\n")
    result = json.loads(report)
    assert run.returncode == 0, run.stderr
    return result["code"], run.stdout, "\n".join(stderr), set(result["modules"])


def test_default_commands_import_no_optional_framework(home, samples, tmp_path, index_name, embedder):
    embedder.class_text_embeddings()  # cached under home, shared with the rest of the suite and read by `index` below
    code, out, _, modules = run_cli_reporting_modules("--help", home=home)
    assert code == 0 and "index" in out
    assert not modules & {*OPTIONAL, *RUNTIMES}, sorted(modules & {*OPTIONAL, *RUNTIMES})

    photos = tmp_path / "photos"
    copy_some(samples, photos, PHOTOS)
    code, _, err, modules = run_cli_reporting_modules("index", str(photos), "--index", index_name, home=home)
    assert code == 0, err
    assert "onnxruntime" in modules  # the offline model ran ...
    assert not modules & set(OPTIONAL), sorted(modules & set(OPTIONAL))  # ... on onnxruntime alone

    # A text query in a fresh process, its graphs cached by the run above: not even the graph writer (onnx) loads.
    code, out, err, modules = run_cli_reporting_modules("search", "a cat", "--json", "--index", index_name, home=home)
    assert code == 0, err
    assert json.loads(out)[0]["path"].endswith("cat-chelsea.png")
    assert not modules & {*OPTIONAL, "onnx", "safetensors"}, sorted(modules & {*OPTIONAL, "onnx", "safetensors"})

    code, _, err, modules = run_cli_reporting_modules("indexes", "list", home=home)
    assert code == 0 and err == "", err
    assert not modules & {*OPTIONAL, *RUNTIMES}, sorted(modules & {*OPTIONAL, *RUNTIMES})


OFFLINE_WITHOUT = r"""
import json, sys
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None
from PIL import Image
from pixsearch.models import load_embedder
model = load_embedder("offline", cache_dir=sys.argv[2])
images = model.embed_images([Image.open(sys.argv[3])])
texts = model.embed_texts(["a cup of coffee"])
print(json.dumps({"image": images.vectors["image"][0].tolist(), "semantic": images.vectors["semantic"][0].tolist(),
                  "text": texts[0].tolist(), "backends": model.active_backends,
                  "modules": sorted(m for m in sys.modules if "." not in m and sys.modules[m])}))
"""


def test_every_module_imports_optional_frameworks_lazily():
    """Importing any pixsearch module (the API, the watcher, OCR, every model family) loads no optional framework
    and no model runtime: they are imported inside the functions that use them."""
    import pixsearch

    env = dict(os.environ, PYTHONPATH=str(Path(pixsearch.__file__).parents[1]))
    run = subprocess.run([sys.executable, "-c", IMPORT_EVERY_MODULE, json.dumps([*OPTIONAL, *RUNTIMES])],
                         capture_output=True, text=True, env=env, timeout=300, check=True)
    found = {module: set(names) for module, names in json.loads(run.stdout).items()}
    assert found == FRAMEWORK_MODULES


def test_the_offline_model_works_without_torch(tmp_path, samples, embedder):
    """With torch, transformers and sentence-transformers unavailable and nothing cached, the offline model writes
    its graphs and embeds photos and texts exactly as in the full install."""
    import numpy as np
    from PIL import Image

    blocked = ["torch", "transformers", "sentence_transformers"]
    cache = tmp_path / "cache"
    cache.mkdir()
    embedder.class_text_embeddings()
    shutil.copy2(embedder.class_cache_path, cache)  # MiniLM's 3,000 class texts: the same either way, and slow
    run = subprocess.run([sys.executable, "-c", OFFLINE_WITHOUT, json.dumps(blocked), str(cache),
                          str(samples / "coffee.png")], capture_output=True, text=True, timeout=600, check=True)
    got = json.loads(run.stdout)
    assert got["backends"] == {"image": "onnx", "text": "onnx"}
    assert {"onnx", "onnxruntime"} <= set(got["modules"])  # the graphs were written in that process
    want = embedder.embed_images([Image.open(samples / "coffee.png")])
    np.testing.assert_allclose(got["image"], want.vectors["image"][0], atol=1e-5)
    np.testing.assert_allclose(got["semantic"], want.vectors["semantic"][0], atol=1e-5)
    np.testing.assert_allclose(got["text"], embedder.embed_texts(["a cup of coffee"])[0], atol=1e-5)


def test_ocr_without_its_extra_names_it(home, samples, tmp_path, index_name, embedder):
    photos = tmp_path / "photos"
    copy_some(samples, photos, PHOTOS[:1])
    code, _, err, _ = run_cli_reporting_modules("index", str(photos), "--index", index_name, "--ocr", home=home,
                                                blocked=("rapidocr",))
    assert code == 1
    assert "pip install 'pixsearch[ocr]'" in err and "Traceback" not in err, err


def test_open_clip_without_its_extra_names_it(home, samples, tmp_path, index_name):
    photos = tmp_path / "photos"
    copy_some(samples, photos, PHOTOS[:1])
    code, _, err, _ = run_cli_reporting_modules(
        "index", str(photos), "--index", index_name, "--model", f"open_clip:ViT-B-32:{tmp_path / 'weights.bin'}",
        home=home, blocked=("open_clip",))
    assert code == 1
    assert "pip install 'pixsearch[clip]'" in err and "Traceback" not in err, err


def test_clip_checkpoint_without_torch_names_the_extra(home, tmp_path):
    """A transformers CLIP checkpoint needs torch once, to export its towers: without it, the error says so."""
    pytest.importorskip("transformers")
    from tiny_models import build_tiny_clip

    tiny = build_tiny_clip(tmp_path / "tiny-clip")
    code, _, err, modules = run_cli_reporting_modules("models", "check", tiny.name, home=home,
                                                      blocked=("torch",))
    assert code == 1
    assert "pip install 'pixsearch[clip]'" in err and "Traceback" not in err, err
    assert "torch" not in modules
